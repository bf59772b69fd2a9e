import io.simpleio.client.ConnectionListener;
import io.simpleio.client.Message;
import io.simpleio.client.SimpleIo;
import io.simpleio.client.SimpleIoException;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.json.JSONObject;

/**
 * A terminal chat client on the Java client: reads lines from stdin and sends each as a {@code
 * chat} message to the chat example's server; prints what arrives.
 *
 * <pre>
 * cargo run --example chat          # the server, in another terminal
 * javac --release 11 -cp /usr/share/java/com.android.json.jar -d /tmp/simpleio-java \
 *     $(find clients/android/src/main clients/android/examples -name '*.java')
 * java -cp /tmp/simpleio-java:/usr/share/java/com.android.json.jar ChatClient http://127.0.0.1:3000 carol
 * </pre>
 *
 * <p>The server's demo identity trusts a {@code user} cookie, so that is how the name is sent.
 * Stop the server and start it again: the client reconnects, and lines typed meanwhile are sent
 * once it is back. On Android the same code runs with {@code context.getMainExecutor()} as the
 * executor, and the lines coming from the UI instead of stdin.
 */
public final class ChatClient {
    private ChatClient() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: ChatClient URL NAME   (e.g. http://127.0.0.1:3000 carol)");
            System.exit(2);
        }
        // Standing in for Android's main thread: every callback runs on this one thread.
        ExecutorService main = Executors.newSingleThreadExecutor();
        SimpleIo io = SimpleIo.builder(args[0] + "/simpleio")
                .header("Cookie", "user=" + args[1])
                .executor(main)
                .connectionListener(new ConnectionListener() {
                    @Override
                    public void onConnect() {
                        System.err.println("* connected");
                    }

                    @Override
                    public void onDisconnect(SimpleIoException reason) {
                        System.err.println("* reconnecting: " + reason.getMessage());
                    }

                    @Override
                    public void onError(SimpleIoException error) {
                        System.err.println("* refused: " + error);
                    }
                })
                .build();
        io.on("chat", ChatClient::show);
        io.connect();

        BufferedReader stdin = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = stdin.readLine()) != null) {
            if (line.isBlank()) continue;
            io.emit("chat", new JSONObject().put("text", line)).whenComplete((reply, error) -> {
                if (error != null) System.err.println("* not sent: " + error.getMessage());
            });
        }
        io.close();
        main.shutdown();
    }

    private static void show(Message m) {
        JSONObject chat = m.data() instanceof JSONObject ? (JSONObject) m.data() : new JSONObject();
        System.out.println(chat.optString("from", "?") + ": " + chat.optString("text"));
    }
}
