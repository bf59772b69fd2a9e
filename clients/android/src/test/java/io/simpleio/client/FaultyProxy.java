package io.simpleio.client;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * A TCP proxy in front of the server that the tests script, as a flaky mobile network would
 * behave: it goes {@link #offline} (cuts every connection and refuses new ones) and back, and
 * {@link #lose}s answers (lets the server answer a request, then drops the connection instead
 * of passing the answer on).
 */
final class FaultyProxy implements AutoCloseable {
    private final ServerSocket listener;
    private final String targetHost;
    private final int targetPort;
    private final Set<Socket> open = ConcurrentHashMap.newKeySet();
    private volatile boolean offline;
    private volatile String loseMethod;
    private volatile String loseIfContains;
    private final AtomicInteger toLose = new AtomicInteger();
    /** How many answers were lost as asked. */
    final AtomicInteger lost = new AtomicInteger();

    FaultyProxy(String targetHost, int targetPort) throws IOException {
        this.targetHost = targetHost;
        this.targetPort = targetPort;
        this.listener = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
        Thread accepting = new Thread(this::accept, "proxy-accept");
        accepting.setDaemon(true);
        accepting.start();
    }

    /** The route's URL through the proxy, for a server route URL {@code url}. */
    String url(String path) {
        return "http://127.0.0.1:" + listener.getLocalPort() + path;
    }

    /** Offline: every open connection is cut, new ones are closed at once. */
    void offline(boolean down) {
        offline = down;
        if (down) {
            for (Socket s : open) quietly(s);
        }
    }

    /** Loses the server's next {@code times} answers to {@code method} requests containing {@code text} (null: any). */
    void lose(String method, int times, String text) {
        loseMethod = method;
        loseIfContains = text;
        toLose.set(times);
    }

    private void accept() {
        while (!listener.isClosed()) {
            try {
                Socket client = listener.accept();
                if (offline) {
                    quietly(client);
                    continue;
                }
                Socket server = new Socket(targetHost, targetPort);
                open.add(client);
                open.add(server);
                String[] method = {""};
                start(() -> upstream(client, server, method));
                start(() -> downstream(server, client, method));
            } catch (IOException e) {
                // Closed, or the server is down: the client sees the connection fail.
            }
        }
    }

    private static void start(Runnable r) {
        Thread t = new Thread(r, "proxy-pump");
        t.setDaemon(true);
        t.start();
    }

    /** Client to server, noting each request's method (a request line starts a write). */
    private void upstream(Socket client, Socket server, String[] method) {
        byte[] buffer = new byte[65536];
        try (InputStream in = client.getInputStream(); OutputStream out = server.getOutputStream()) {
            int n;
            while ((n = in.read(buffer)) != -1) {
                String head = new String(buffer, 0, Math.min(n, 8), StandardCharsets.ISO_8859_1);
                if (head.startsWith("GET ")) method[0] = "GET";
                else if (head.startsWith("POST ")) method[0] = "POST";
                out.write(buffer, 0, n);
                out.flush();
            }
        } catch (IOException e) {
            // Either side closed.
        } finally {
            quietly(client);
            quietly(server);
        }
    }

    /** Server to client; an answer to lose is read whole (to check its content), then dropped. */
    private void downstream(Socket server, Socket client, String[] method) {
        byte[] buffer = new byte[65536];
        try (InputStream in = server.getInputStream(); OutputStream out = client.getOutputStream()) {
            int n;
            while ((n = in.read(buffer)) != -1) {
                if (toLose.get() > 0 && method[0].equals(loseMethod)) {
                    ByteArrayOutputStream answer = new ByteArrayOutputStream();
                    answer.write(buffer, 0, n);
                    while (!complete(answer.toByteArray()) && (n = in.read(buffer)) != -1) answer.write(buffer, 0, n);
                    String text = new String(answer.toByteArray(), StandardCharsets.UTF_8);
                    if ((loseIfContains == null || text.contains(loseIfContains)) && toLose.getAndDecrement() > 0) {
                        lost.incrementAndGet();
                        return; // the finally cuts both connections: the answer is lost
                    }
                    out.write(answer.toByteArray());
                } else {
                    out.write(buffer, 0, n);
                }
                out.flush();
            }
        } catch (IOException e) {
            // Either side closed.
        } finally {
            quietly(client);
            quietly(server);
        }
    }

    /** Whether {@code bytes} hold a whole HTTP answer (by Content-Length, or a chunked end). */
    private static boolean complete(byte[] bytes) {
        String text = new String(bytes, StandardCharsets.ISO_8859_1);
        int end = text.indexOf("\r\n\r\n");
        if (end < 0) return false;
        String headers = text.substring(0, end).toLowerCase();
        int at = headers.indexOf("content-length:");
        if (at >= 0) {
            int stop = headers.indexOf("\r\n", at);
            long length = Long.parseLong(headers.substring(at + 15, stop < 0 ? headers.length() : stop).trim());
            return bytes.length >= end + 4 + length;
        }
        return text.endsWith("0\r\n\r\n");
    }

    private void quietly(Socket socket) {
        open.remove(socket);
        try {
            socket.close();
        } catch (IOException e) {
            // Already closed.
        }
    }

    @Override
    public void close() throws IOException {
        listener.close();
        offline(true);
    }
}
