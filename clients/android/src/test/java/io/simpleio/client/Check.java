package io.simpleio.client;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.Supplier;
import org.json.JSONArray;
import org.json.JSONObject;

/** Assertions for the tests; each failure says what was expected. */
final class Check {
    private Check() {}

    /** Thrown by a test that cannot run here; the runner reports it as a loud SKIP. */
    static final class Skip extends RuntimeException {
        private static final long serialVersionUID = 1L;

        Skip(String why) {
            super(why);
        }
    }

    static void isTrue(boolean condition, String what) {
        if (!condition) throw new AssertionError(what);
    }

    /** {@code expected} and {@code actual} are the same JSON (object keys in any order, bytes as bytes). */
    static void same(Object expected, Object actual, String what) {
        String e = canonical(expected);
        String a = canonical(actual);
        if (!e.equals(a)) throw new AssertionError(what + ": expected " + e + ", got " + a);
    }

    /** JSON text with sorted keys, and every number written as org.json writes it. */
    static String canonical(Object value) {
        return Json.write(sorted(value));
    }

    private static Object sorted(Object value) {
        if (value instanceof JSONObject) {
            Map<String, Object> map = new TreeMap<>();
            Iterator<String> keys = ((JSONObject) value).keys();
            while (keys.hasNext()) {
                String key = keys.next();
                map.put(key, sorted(((JSONObject) value).opt(key)));
            }
            return map;
        }
        if (value instanceof Map) {
            Map<String, Object> map = new TreeMap<>();
            for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) map.put(String.valueOf(e.getKey()), sorted(e.getValue()));
            return map;
        }
        if (value instanceof JSONArray) {
            List<Object> list = new ArrayList<>();
            for (int i = 0; i < ((JSONArray) value).length(); i++) list.add(sorted(((JSONArray) value).opt(i)));
            return list;
        }
        if (value instanceof List) {
            List<Object> list = new ArrayList<>();
            for (Object item : (List<?>) value) list.add(sorted(item));
            return list;
        }
        return value;
    }

    /** Waits until {@code condition} holds, at most {@code ms}; the failure names what was awaited. */
    static void until(String what, Supplier<Boolean> condition, long ms) {
        long end = System.currentTimeMillis() + ms;
        while (!condition.get()) {
            if (System.currentTimeMillis() > end) throw new AssertionError("timed out after " + ms + " ms waiting for " + what);
            sleep(10);
        }
    }

    static void until(String what, Supplier<Boolean> condition) {
        until(what, condition, 10_000);
    }

    static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            throw new AssertionError("interrupted", e);
        }
    }

    /** The future's value, within 15 s. */
    static Object value(CompletableFuture<Object> future, String what) {
        try {
            return future.get(15, TimeUnit.SECONDS);
        } catch (ExecutionException e) {
            throw new AssertionError(what + " failed: " + e.getCause(), e.getCause());
        } catch (TimeoutException | InterruptedException e) {
            throw new AssertionError(what + " did not complete", e);
        }
    }

    /** The future's failure, within 15 s; it must be a {@link SimpleIoException}. */
    static SimpleIoException failure(CompletableFuture<Object> future, String what) {
        try {
            Object value = future.get(15, TimeUnit.SECONDS);
            throw new AssertionError(what + " should have failed, but resolved with " + Json.write(value));
        } catch (ExecutionException e) {
            if (e.getCause() instanceof SimpleIoException) return (SimpleIoException) e.getCause();
            throw new AssertionError(what + " failed with " + e.getCause(), e.getCause());
        } catch (TimeoutException | InterruptedException e) {
            throw new AssertionError(what + " did not complete", e);
        }
    }

    /** A synchronized list, for what listeners collect on other threads. */
    static <T> List<T> list() {
        return Collections.synchronizedList(new ArrayList<>());
    }

    /** A snapshot of {@code list}, to compare. */
    static <T> List<T> copy(List<T> list) {
        synchronized (list) {
            return new ArrayList<>(list);
        }
    }

    static List<Object> of(Object... items) {
        return new ArrayList<>(Arrays.asList(items));
    }
}
