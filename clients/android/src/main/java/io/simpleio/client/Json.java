package io.simpleio.client;

import java.lang.reflect.Array;
import java.util.Base64;
import java.util.Collection;
import java.util.Iterator;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;
import org.json.JSONTokener;

/**
 * JSON in and out, with bytes as {@code {"$bytes": base64}} (docs/spec.md §4b).
 *
 * <p>Writing is done here rather than by org.json's {@code toString}, which knows nothing of
 * {@code byte[]} (it would write the array's identity) nor of nesting limits. Reading uses
 * org.json's tokener, then replaces each bytes object by its {@code byte[]}.
 */
final class Json {
    private Json() {}

    /** Data the client cannot write: a type JSON has no form for, a non-finite number, a cycle. */
    static final class Unwritable extends IllegalArgumentException {
        private static final long serialVersionUID = 1L;
        final String code;

        Unwritable(String code, String message) {
            super(message);
            this.code = code;
        }
    }

    /** {@code value} as JSON text; nesting beyond {@code maxDepth} levels is refused. */
    static String write(Object value, int maxDepth) {
        StringBuilder out = new StringBuilder();
        write(out, value, 0, maxDepth);
        return out.toString();
    }

    /** {@code value} as JSON text, for messages and diagnostics (no depth limit but a sane one). */
    static String write(Object value) {
        try {
            return write(value, 1000);
        } catch (Unwritable e) {
            return String.valueOf(value);
        }
    }

    private static void write(StringBuilder out, Object value, int depth, int maxDepth) {
        if (value == null || value == JSONObject.NULL) {
            out.append("null");
        } else if (value instanceof String) {
            out.append(JSONObject.quote((String) value));
        } else if (value instanceof Boolean) {
            out.append(value.toString());
        } else if (value instanceof Number) {
            try {
                out.append(JSONObject.numberToString((Number) value));
            } catch (JSONException e) {
                throw new Unwritable("invalid_data", "JSON has no form for the number " + value);
            }
        } else if (value instanceof Character) {
            out.append(JSONObject.quote(value.toString()));
        } else if (value instanceof byte[]) {
            // One level: the bytes object is an object.
            nest(depth, maxDepth);
            out.append("{\"$bytes\":\"")
                    .append(Base64.getEncoder().encodeToString((byte[]) value))
                    .append("\"}");
        } else if (value instanceof JSONObject) {
            JSONObject object = (JSONObject) value;
            nest(depth, maxDepth);
            out.append('{');
            Iterator<String> keys = object.keys();
            boolean first = true;
            while (keys.hasNext()) {
                String key = keys.next();
                if (!first) out.append(',');
                first = false;
                out.append(JSONObject.quote(key)).append(':');
                write(out, object.opt(key), depth + 1, maxDepth);
            }
            out.append('}');
        } else if (value instanceof Map) {
            nest(depth, maxDepth);
            out.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> entry : ((Map<?, ?>) value).entrySet()) {
                if (!first) out.append(',');
                first = false;
                out.append(JSONObject.quote(String.valueOf(entry.getKey()))).append(':');
                write(out, entry.getValue(), depth + 1, maxDepth);
            }
            out.append('}');
        } else if (value instanceof JSONArray) {
            JSONArray array = (JSONArray) value;
            nest(depth, maxDepth);
            out.append('[');
            for (int i = 0; i < array.length(); i++) {
                if (i > 0) out.append(',');
                write(out, array.opt(i), depth + 1, maxDepth);
            }
            out.append(']');
        } else if (value instanceof Collection) {
            nest(depth, maxDepth);
            out.append('[');
            boolean first = true;
            for (Object item : (Collection<?>) value) {
                if (!first) out.append(',');
                first = false;
                write(out, item, depth + 1, maxDepth);
            }
            out.append(']');
        } else if (value.getClass().isArray()) {
            nest(depth, maxDepth);
            out.append('[');
            for (int i = 0; i < Array.getLength(value); i++) {
                if (i > 0) out.append(',');
                write(out, Array.get(value, i), depth + 1, maxDepth);
            }
            out.append(']');
        } else {
            throw new Unwritable(
                    "invalid_data", "JSON has no form for a " + value.getClass().getName());
        }
    }

    /** Entering one more level of arrays and objects (spec §6: {@code [[1]]} is 2 levels). */
    private static void nest(int depth, int maxDepth) {
        if (depth + 1 > maxDepth) {
            throw new Unwritable(
                    "data_too_deep", "the data nests deeper than " + maxDepth + " levels");
        }
    }

    /** Parses a whole JSON text; bytes objects become {@code byte[]}. */
    static Object parse(String text) throws JSONException {
        JSONTokener tokener = new JSONTokener(text);
        Object value = tokener.nextValue();
        if (tokener.more()) {
            throw new JSONException("text after the JSON value");
        }
        return decode(value);
    }

    /**
     * Turns every {@code {"$bytes": base64}} in {@code value} into a {@code byte[]}, in place
     * inside objects and arrays. Only an object whose one key is {@code $bytes} holding a
     * string qualifies; invalid base64 leaves the object as it is (§4b).
     */
    static Object decode(Object value) {
        if (value instanceof JSONObject) {
            JSONObject object = (JSONObject) value;
            if (object.length() == 1 && object.opt("$bytes") instanceof String) {
                try {
                    return Base64.getDecoder().decode((String) object.opt("$bytes"));
                } catch (IllegalArgumentException e) {
                    return object;
                }
            }
            Iterator<String> keys = object.keys();
            while (keys.hasNext()) {
                String key = keys.next();
                Object child = object.opt(key);
                Object decoded = decode(child);
                if (decoded != child) {
                    try {
                        object.put(key, decoded);
                    } catch (JSONException e) {
                        throw new IllegalStateException(e);
                    }
                }
            }
        } else if (value instanceof JSONArray) {
            JSONArray array = (JSONArray) value;
            for (int i = 0; i < array.length(); i++) {
                Object child = array.opt(i);
                Object decoded = decode(child);
                if (decoded != child) {
                    try {
                        array.put(i, decoded);
                    } catch (JSONException e) {
                        throw new IllegalStateException(e);
                    }
                }
            }
        }
        return value;
    }

    /** {@code JSONObject.NULL} as Java's {@code null}, for values handed to the application. */
    static Object unwrapNull(Object value) {
        return value == JSONObject.NULL ? null : value;
    }
}
