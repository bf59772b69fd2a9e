package io.simpleio.client;

import static io.simpleio.client.Check.copy;
import static io.simpleio.client.Check.of;
import static io.simpleio.client.Check.same;
import static io.simpleio.client.Check.until;
import static io.simpleio.client.Check.value;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.atomic.AtomicReference;
import org.json.JSONObject;

/** The client against a real server (tests/android_client.rs starts it); see {@link Support}. */
final class ClientTests {
    private ClientTests() {}

    private static Map<String, Object> map(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
        return m;
    }

    @Test
    static void emitResolvesWithTheHandlersReply() throws Exception {
        SimpleIo io = Support.connect(Support.user("echo"));
        try {
            JSONObject data = new JSONObject().put("n", 1).put("s", "é✓ \"quoted\"\n");
            same(data, value(io.emit("echo", data), "echo"), "the reply");
            same(null, value(io.emit("echo"), "echo without data"), "no data, a null reply");
            same(of(1, 2.5, true, "x"), value(io.emit("echo", Arrays.asList(1, 2.5, true, "x")), "a list"), "a list");
        } finally {
            io.close();
        }
    }

    @Test
    static void emitFailsWithTheHandlersErrorAndItsCode() {
        SimpleIo io = Support.connect(Support.user("fail"));
        try {
            SimpleIoException e = Check.failure(io.emit("fail"), "fail");
            same("handler_error", e.code(), "the code");
            Check.isTrue(e.getMessage() != null && !e.getMessage().isEmpty(), "a message for people");
            same("unknown_event", Check.failure(io.emit("nope"), "nope").code(), "an unknown event");
        } finally {
            io.close();
        }
    }

    @Test
    static void messagesToTheUserArriveOnceEachInOrder() {
        SimpleIo io = Support.builder(Support.user("order"), Support.url()).build();
        List<Object> got = Support.collect(io, "n");
        io.connect();
        try {
            List<CompletableFuture<Object>> sends = new ArrayList<>();
            io.batch(() -> {
                for (int i = 0; i < 30; i++) sends.add(io.emit("send", map("event", "n", "data", i)));
            });
            for (CompletableFuture<Object> s : sends) value(s, "send");
            until("30 messages", () -> got.size() >= 30);
            Check.sleep(300);
            List<Object> expected = new ArrayList<>();
            for (int i = 0; i < 30; i++) expected.add(i);
            same(expected, copy(got), "each once, in order");
        } finally {
            io.close();
        }
    }

    @Test
    static void everyClientOfAUserGetsEveryMessage() {
        String user = Support.user("two-clients");
        SimpleIo a = Support.builder(user, Support.url()).build();
        SimpleIo b = Support.builder(user, Support.url()).build();
        List<Object> gotA = Support.collect(a, "news");
        List<Object> gotB = Support.collect(b, "news");
        a.connect();
        b.connect();
        try {
            Support.connected(a);
            Support.connected(b);
            Check.isTrue(!a.id().equals(b.id()), "each client has its own id");
            value(a.emit("send", map("event", "news", "data", "one")), "send one");
            value(b.emit("send", map("event", "news", "data", "two")), "send two");
            until("both clients get both", () -> gotA.size() >= 2 && gotB.size() >= 2);
            Check.sleep(200);
            same(of("one", "two"), copy(gotA), "client a");
            same(of("one", "two"), copy(gotB), "client b");
        } finally {
            a.close();
            b.close();
        }
    }

    @Test
    static void aMessageToAnotherUserReachesOnlyThatUser() {
        String ann = Support.user("ann");
        String bob = Support.user("bob");
        SimpleIo a = Support.builder(ann, Support.url()).build();
        SimpleIo b = Support.builder(bob, Support.url()).build();
        List<Object> toAnn = Support.collect(a, "dm");
        List<Object> toBob = Support.collect(b, "dm");
        a.connect();
        b.connect();
        try {
            Support.connected(b);
            value(a.emit("send", map("to", bob, "event", "dm", "data", "hi bob")), "send");
            until("bob's message", () -> toBob.size() == 1);
            Check.sleep(300);
            same(of("hi bob"), copy(toBob), "bob got it");
            same(of(), copy(toAnn), "ann did not");
        } finally {
            a.close();
            b.close();
        }
    }

    @Test
    static void volatileMessagesReachAWaitingClient() {
        SimpleIo io = Support.builder(Support.user("volatile"), Support.url()).build();
        List<Message> typing = Check.list();
        io.on("typing", typing::add);
        io.connect();
        try {
            Support.connected(io);
            // Volatile messages reach only polls waiting at that moment: send until one lands.
            long end = System.currentTimeMillis() + 10_000;
            while (typing.isEmpty() && System.currentTimeMillis() < end) {
                value(io.emit("send", map("event", "typing", "data", map("from", "x"), "volatile", true)), "send");
                Check.sleep(50);
            }
            Check.isTrue(!typing.isEmpty(), "a volatile message arrived");
            Message m = typing.get(0);
            Check.isTrue(m.isVolatile() && m.position() == -1, "it is volatile, with no position");
            same(map("from", "x"), m.data(), "its data");
        } finally {
            io.close();
        }
    }

    @Test
    static void listenersAndEmitOutcomesRunOnTheAppsExecutor() {
        SimpleIo io = Support.builder(Support.user("executor"), Support.url()).build();
        AtomicReference<String> listenerThread = new AtomicReference<>();
        AtomicReference<String> replyThread = new AtomicReference<>();
        io.on("ping", m -> listenerThread.set(Thread.currentThread().getName()));
        io.connect();
        try {
            // A slow handler, so the callback is attached before the reply comes.
            io.emit("slow", map("ms", 200)).thenAccept(r -> replyThread.set(Thread.currentThread().getName()));
            value(io.emit("send", map("event", "ping")), "send");
            until("the listener and the reply callback ran", () -> listenerThread.get() != null && replyThread.get() != null);
            same(Support.MAIN, listenerThread.get(), "the listener's thread");
            same(Support.MAIN, replyThread.get(), "the emit callback's thread");
        } finally {
            io.close();
        }
    }

    @Test
    static void aPostWhoseAnswerWasLostIsResentAndReachesTheHandlerOnce() throws Exception {
        try (FaultyProxy proxy = Support.proxy()) {
            SimpleIo io = Support.builder(Support.user("lost-post"), proxy.url("/simpleio")).build().connect();
            try {
                Support.connected(io);
                proxy.lose("POST", 1, null);
                same(1, value(io.emit("count", map("key", "k")), "count"), "the first count");
                same(1, proxy.lost.get(), "an answer was lost (else this tested nothing)");
                same(2, value(io.emit("count", map("key", "k")), "count"), "the handler ran once for the first");
            } finally {
                io.close();
            }
        }
    }

    @Test
    static void lostPollAnswersDeliverEachMessageOnceInOrder() throws Exception {
        String user = Support.user("lost-get");
        try (FaultyProxy proxy = Support.proxy()) {
            SimpleIo io = Support.builder(user, proxy.url("/simpleio")).build();
            List<Object> got = Support.collect(io, "n");
            io.connect();
            SimpleIo sender = Support.connect(Support.user("sender"));
            try {
                Support.connected(io);
                proxy.lose("GET", 2, "\"pos\"");
                for (int i = 1; i <= 3; i++) value(sender.emit("send", map("to", user, "event", "n", "data", i)), "send");
                until("3 messages", () -> got.size() >= 3);
                Check.sleep(300);
                same(of(1, 2, 3), copy(got), "each once, in order");
                Check.isTrue(proxy.lost.get() >= 1, "a poll's answer was lost (else this tested nothing)");
            } finally {
                io.close();
                sender.close();
            }
        }
    }

    @Test
    static void whatIsSentWhileOfflineGoesOutInOrderOnceBackAndNothingIsMissed() throws Exception {
        String user = Support.user("offline");
        try (FaultyProxy proxy = Support.proxy()) {
            List<String> events = Check.list();
            SimpleIo io = Support.builder(user, proxy.url("/simpleio"))
                    .connectionListener(new ConnectionListener() {
                        @Override
                        public void onConnect() {
                            events.add("connect");
                        }

                        @Override
                        public void onDisconnect(SimpleIoException reason) {
                            events.add("disconnect");
                        }
                    })
                    .build();
            List<Object> got = Support.collect(io, "n");
            io.connect();
            SimpleIo other = Support.connect(Support.user("other"));
            try {
                Support.connected(io);
                proxy.offline(true);
                until("the client sees it is offline", () -> !io.isConnected());
                List<CompletableFuture<Object>> sends = new ArrayList<>();
                for (int i = 1; i <= 3; i++) sends.add(io.emit("send", map("event", "n", "data", i)));
                value(other.emit("send", map("to", user, "event", "n", "data", "while away")), "send to the offline user");
                Check.sleep(500);
                Check.isTrue(got.isEmpty(), "nothing arrives while offline");
                proxy.offline(false);
                io.wake(); // as an app does when the network comes back
                for (CompletableFuture<Object> s : sends) value(s, "a send made offline");
                until("4 messages", () -> got.size() >= 4);
                Check.sleep(300);
                same(of("while away", 1, 2, 3), copy(got), "each once, the offline sends in order");
                same(of("connect", "disconnect", "connect"), copy(events), "the connection events");
            } finally {
                io.close();
                other.close();
            }
        }
    }

    @Test
    static void acrossAServerRestartNothingIsLostOrDeliveredTwice() throws Exception {
        String ann = Support.user("ann");
        String bob = Support.user("bob");
        SimpleIo a = Support.connect(ann);
        SimpleIo b = Support.builder(bob, Support.url()).build();
        List<Object> got = Support.collect(b, "dm");
        b.connect();
        try {
            Support.connected(b);
            value(a.emit("send", map("to", bob, "event", "dm", "data", 0)), "before");
            until("the first message", () -> got.size() == 1);
            Support.control("stop");
            List<CompletableFuture<Object>> sends = new ArrayList<>();
            for (int i = 1; i <= 3; i++) sends.add(a.emit("send", map("to", bob, "event", "dm", "data", i)));
            Check.sleep(500);
            Support.control("start");
            for (CompletableFuture<Object> s : sends) value(s, "a send made while the server was down");
            until("4 messages", () -> got.size() >= 4);
            Check.sleep(300);
            same(of(0, 1, 2, 3), copy(got), "each once, in order");
        } finally {
            a.close();
            b.close();
        }
    }

    @Test
    static void badInputFailsAloneAndTheRestIsDelivered() throws Exception {
        SimpleIo io = Support.connect(Support.user("bad"));
        try {
            Support.connected(io);
            List<CompletableFuture<Object>> outcomes = new ArrayList<>();
            io.batch(() -> {
                outcomes.add(io.emit("echo", 1));
                outcomes.add(io.of("no-slash").emit("echo", 2)); // a malformed namespace name
                outcomes.add(io.emit("", 3)); // an empty event
                outcomes.add(io.emit("echo", 4));
            });
            same(1, value(outcomes.get(0), "the first"), "the first is delivered");
            same("invalid_field", Check.failure(outcomes.get(1), "the malformed namespace").code(), "its code");
            same("invalid_field", Check.failure(outcomes.get(2), "the empty event").code(), "its code");
            same(4, value(outcomes.get(3), "the last"), "the last is delivered");

            // Over a limit of the server's: failed at once, never sent (spec §6).
            char[] longName = new char[200];
            Arrays.fill(longName, 'e');
            same("invalid_field", Check.failure(io.emit(new String(longName), 1), "a long event").code(), "a long event");
            Object deep = "x";
            for (int i = 0; i < 65; i++) deep = of(deep);
            same("data_too_deep", Check.failure(io.emit("echo", deep), "deep data").code(), "deep data");
            same("invalid_data", Check.failure(io.emit("echo", new Object()), "an object JSON has no form for").code(), "odd data");
            same("invalid_data", Check.failure(io.emit("echo", Double.NaN), "NaN").code(), "NaN");

            // A namespace without a handler refuses its messages one by one; others still go.
            SimpleIoException refused = Check.failure(io.of("/news").emit("echo", 5), "to /news");
            Check.isTrue(refused.code() != null, "a refusal with a code: " + refused);
            same(6, value(io.emit("echo", 6), "after"), "the client goes on");

            // The server answers bad requests with the spec's JSON error.
            String[] answer = Support.post("someone", "{\"client\":\"c\",\"messages\":[{\"id\":\"a\"");
            same("400", answer[0], "a truncated body's status");
            same("malformed_json", new JSONObject(answer[1]).getJSONObject("error").getString("code"), "its code");
        } finally {
            io.close();
        }
    }

    @Test
    static void a401IsReportedAndTheClientResumesOnceSignedIn() {
        AtomicReference<String> user = new AtomicReference<>();
        List<SimpleIoException> errors = Check.list();
        SimpleIo io = SimpleIo.builder(Support.url())
                .headers(() -> user.get() == null ? null : Map.of("x-user", user.get()))
                .backoff(20, 200)
                .executor(Support.main())
                .connectionListener(new ConnectionListener() {
                    @Override
                    public void onError(SimpleIoException error) {
                        errors.add(error);
                    }
                })
                .build()
                .connect();
        try {
            CompletableFuture<Object> reply = io.emit("echo", "after sign-in");
            until("a 401 reported", () -> !errors.isEmpty());
            same(401, errors.get(0).status(), "the status");
            same("unauthorized", errors.get(0).code(), "the code of " + errors.get(0) + " " + errors);
            Check.isTrue(!reply.isDone(), "the emit waits, it is not failed");
            user.set(Support.user("signed-in"));
            same("after sign-in", value(reply, "the emit"), "the emit resolves once signed in");
            Support.connected(io);
        } finally {
            io.close();
        }
    }

    @Test
    static void namespacesShareTheConnectionAndEachGetsItsOwnMessages() {
        SimpleIo io = Support.builder(Support.user("ns"), Support.url()).namespaces("/chat").build();
        Namespace chat = io.of("/chat");
        List<Object> root = Support.collect(io, "n");
        List<Object> inChat = Support.collect(chat, "n");
        List<Object> news = Check.list();
        io.connect();
        try {
            same("/chat", value(chat.emit("where"), "where in /chat"), "the /chat handler");
            same("/", value(io.emit("where"), "where in /"), "the / handler");
            value(io.emit("send", map("event", "n", "data", "root")), "to /");
            value(io.emit("send", map("ns", "/news", "event", "n", "data", "news")), "to /news");
            value(chat.emit("send", map("event", "n", "data", "chat")), "to /chat");
            until("both", () -> root.size() >= 1 && inChat.size() >= 1);
            // /news is listed from the poll after of(): a message sent to it now arrives.
            Namespace late = io.of("/news");
            late.on("n", m -> news.add(m.data()));
            Check.sleep(300);
            value(io.emit("send", map("ns", "/news", "event", "n", "data", "late")), "to /news again");
            until("the late /news message", () -> news.contains("late"));
            Check.sleep(200);
            same(of("root"), copy(root), "/ got its own");
            same(of("chat"), copy(inChat), "/chat got its own");
        } finally {
            io.close();
        }
    }

    @Test
    static void bytesGoOutAndComeBackAsByteArrays() throws Exception {
        byte[] all = new byte[256];
        for (int i = 0; i < 256; i++) all[i] = (byte) i;
        SimpleIo io = Support.builder(Support.user("bytes"), Support.url()).build();
        List<Object> got = Support.collect(io, "bytes");
        io.connect();
        try {
            Object reply = value(io.emit("bytes", map("name", "all", "content", all)), "bytes");
            JSONObject back = (JSONObject) reply;
            same(256, back.get("len"), "the server decoded 256 bytes");
            Check.isTrue(Arrays.equals(all, (byte[]) back.get("content")), "the reply's bytes");
            until("the message", () -> got.size() == 1);
            JSONObject message = (JSONObject) got.get(0);
            Check.isTrue(Arrays.equals(all, (byte[]) message.get("content")), "the message's bytes");
        } finally {
            io.close();
        }
    }

    @Test
    static void closeFailsWaitingEmitsAndStops() {
        SimpleIo io = Support.connect(Support.user("close"));
        Support.connected(io);
        CompletableFuture<Object> waiting = io.emit("slow", map("ms", 2000));
        Check.sleep(100);
        io.close();
        same("closed", Check.failure(waiting, "the waiting emit").code(), "a waiting emit");
        same("closed", Check.failure(io.emit("echo", 1), "an emit after close").code(), "an emit after close");
        Check.isTrue(!io.isConnected(), "not connected after close");
    }
}
