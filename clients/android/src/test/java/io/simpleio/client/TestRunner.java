package io.simpleio.client;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * A small test runner, so the tests need nothing beyond the JDK: runs every {@link Test}
 * method of the classes named on the command line (in name order, each with a time limit),
 * prints a TAP-like report, and exits 1 if any failed. A test that throws {@link Check.Skip}
 * is reported as a loud SKIP, not as a pass. {@code SIMPLEIO_TEST_FILTER} runs only the tests
 * whose name contains it.
 */
public final class TestRunner {
    private TestRunner() {}

    private static final long LIMIT_SECONDS = 90;

    public static void main(String[] args) throws Exception {
        String filter = System.getenv("SIMPLEIO_TEST_FILTER");
        List<Method> tests = new ArrayList<>();
        for (String name : args) {
            Class<?> type = Class.forName("io.simpleio.client." + name);
            List<Method> mine = new ArrayList<>();
            for (Method method : type.getDeclaredMethods()) {
                if (method.isAnnotationPresent(Test.class)
                        && Modifier.isStatic(method.getModifiers())
                        && (filter == null || method.getName().contains(filter))) {
                    mine.add(method);
                }
            }
            mine.sort(Comparator.comparing(Method::getName));
            tests.addAll(mine);
        }
        int failed = 0;
        int skipped = 0;
        int n = 0;
        ExecutorService pool = Executors.newCachedThreadPool(r -> {
            Thread thread = new Thread(r, "test");
            thread.setDaemon(true);
            return thread;
        });
        for (Method test : tests) {
            n++;
            String name = test.getDeclaringClass().getSimpleName() + "." + test.getName();
            long start = System.nanoTime();
            Future<?> running = pool.submit(() -> {
                test.invoke(null);
                return null;
            });
            Throwable error = null;
            try {
                running.get(LIMIT_SECONDS, TimeUnit.SECONDS);
            } catch (TimeoutException e) {
                running.cancel(true);
                error = new AssertionError("timed out after " + LIMIT_SECONDS + " s");
            } catch (ExecutionException e) {
                error = e.getCause();
                if (error instanceof InvocationTargetException) error = error.getCause();
            }
            long ms = (System.nanoTime() - start) / 1_000_000;
            if (error == null) {
                System.out.println("ok " + n + " - " + name + " (" + ms + " ms)");
            } else if (error instanceof Check.Skip) {
                skipped++;
                System.out.println("ok " + n + " - " + name + " # SKIP " + error.getMessage());
                System.err.println("\n!!! SKIPPED: " + name + ": " + error.getMessage() + " !!!\n");
            } else {
                failed++;
                System.out.println("not ok " + n + " - " + name + ": " + error);
                error.printStackTrace(System.out);
            }
            System.out.flush();
        }
        System.out.println("# tests " + n + ", failed " + failed + ", skipped " + skipped);
        System.exit(failed == 0 && n > 0 ? 0 : 1);
    }
}
