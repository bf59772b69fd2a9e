-- simpleio's tables, in the schema the storage was given (its connections' search_path).
-- Positions and times are bigints: positions stay below 2^53, times are Unix milliseconds.

-- The current epoch, and anything else that is one value per database.
CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

-- One row per user that has a log: the row every operation on the user locks first
-- (`SELECT ... FOR UPDATE`), so operations on one user run one at a time and operations on
-- many users lock them in `user_id` order, never deadlocking. The counters are kept by the
-- triggers below, set-based per statement.
CREATE TABLE users (
    user_id text PRIMARY KEY,
    -- The last position given to a message of the user.
    last_pos bigint NOT NULL DEFAULT 0,
    -- Delivered messages up to here were trimmed already.
    trimmed_to bigint NOT NULL DEFAULT 0,
    -- Messages in the log, and the bytes of their data.
    queued integer NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0,
    -- Ack records (messages asking for replies, until their expiry), and their replies' bytes.
    acks integer NOT NULL DEFAULT 0,
    reply_bytes bigint NOT NULL DEFAULT 0,
    -- Origins remembered.
    origins integer NOT NULL DEFAULT 0
);

-- The event and data of messages, once per fan-out: messages refer to them by id.
CREATE TABLE payloads (
    id bigint PRIMARY KEY,
    event text NOT NULL,
    data text NOT NULL,
    -- The latest expiry of the messages that refer to it: the sweep removes it after.
    expires_at bigint NOT NULL
);
CREATE INDEX payloads_by_expiry ON payloads (expires_at);

-- Each user's log. `client` is '' for a message to the user as a whole.
CREATE TABLE messages (
    user_id text NOT NULL,
    pos bigint NOT NULL,
    client text NOT NULL,
    ns text NOT NULL,
    payload bigint NOT NULL,
    expires_at bigint NOT NULL,
    sender text,
    size integer NOT NULL,
    ack boolean NOT NULL,
    PRIMARY KEY (user_id, pos)
);
-- A new client's earliest message addressed to it.
CREATE INDEX messages_by_client ON messages (user_id, client, pos) WHERE client <> '';
-- A sender's oldest messages in a queue, to evict at its share.
CREATE INDEX messages_by_sender ON messages (user_id, sender, pos) WHERE sender IS NOT NULL;
-- The sweep of expired messages.
CREATE INDEX messages_by_expiry ON messages (expires_at);

-- Each sender's share of each queue, kept by the triggers.
CREATE TABLE senders (
    user_id text NOT NULL,
    sender text NOT NULL,
    count integer NOT NULL,
    bytes bigint NOT NULL,
    PRIMARY KEY (user_id, sender)
);

-- Client records: made by a fetch (polled) or by `join`/`set_data` (not polled).
CREATE TABLE clients (
    user_id text NOT NULL,
    client_id text NOT NULL,
    cursor bigint NOT NULL DEFAULT 0,
    namespaces text[] NOT NULL DEFAULT '{}',
    seen_until bigint NOT NULL,
    polled boolean NOT NULL DEFAULT false,
    PRIMARY KEY (user_id, client_id)
);
CREATE INDEX clients_by_presence ON clients (seen_until);

-- Each user's watermark per namespace.
CREATE TABLE watermarks (
    user_id text NOT NULL,
    ns text NOT NULL,
    wm bigint NOT NULL,
    PRIMARY KEY (user_id, ns)
);

-- Origins of sends (`NewMessage::origin`), until their message's expiry.
CREATE TABLE origins (
    user_id text NOT NULL,
    origin text NOT NULL,
    pos bigint NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (user_id, origin)
);
CREATE INDEX origins_by_expiry ON origins (expires_at);

-- Ack records of messages asking for replies, and their replies. `client` as in messages.
CREATE TABLE acks (
    user_id text NOT NULL,
    pos bigint NOT NULL,
    client text NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (user_id, pos)
);
CREATE INDEX acks_by_expiry ON acks (expires_at);

CREATE TABLE replies (
    user_id text NOT NULL,
    pos bigint NOT NULL,
    client_id text NOT NULL,
    data text NOT NULL,
    PRIMARY KEY (user_id, pos, client_id)
);

-- Dedup records: in progress while `outcome` is null, until `until` in either state.
CREATE TABLE dedup (
    user_id text NOT NULL,
    client_id text NOT NULL,
    msg_id text NOT NULL,
    seq bigint NOT NULL,
    owner bigint NOT NULL,
    outcome text,
    until bigint NOT NULL,
    PRIMARY KEY (user_id, client_id, msg_id)
);
CREATE INDEX dedup_by_user ON dedup (user_id, seq);
CREATE INDEX dedup_by_client ON dedup (user_id, client_id, seq);
CREATE INDEX dedup_by_expiry ON dedup (until);
CREATE SEQUENCE dedup_claims;

-- Room memberships: `client_id` is '' for a user's own membership.
CREATE TABLE rooms (
    room text NOT NULL,
    user_id text NOT NULL,
    client_id text NOT NULL,
    PRIMARY KEY (room, user_id, client_id)
);
CREATE INDEX rooms_by_member ON rooms (user_id, client_id);

-- Members' data: `client_id` is '' for a user's data.
CREATE TABLE member_data (
    user_id text NOT NULL,
    client_id text NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (user_id, client_id, key)
);

-- Signals too long for a NOTIFY payload (8,000 bytes): the notification names the row.
CREATE TABLE signal_bodies (
    id bigserial PRIMARY KEY,
    body text NOT NULL,
    created_at bigint NOT NULL
);
CREATE INDEX signal_bodies_by_age ON signal_bodies (created_at);

-- The counters of `users` and `senders`, kept per statement from its transition table, so a
-- fan-out's insert updates each of its users once.
CREATE FUNCTION messages_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users u SET queued = u.queued + n.c, bytes = u.bytes + n.b
    FROM (SELECT user_id, count(*) AS c, sum(size) AS b FROM new_rows GROUP BY user_id) n
    WHERE u.user_id = n.user_id;
    INSERT INTO senders (user_id, sender, count, bytes)
    SELECT user_id, sender, count(*), sum(size) FROM new_rows
    WHERE sender IS NOT NULL GROUP BY user_id, sender
    ON CONFLICT (user_id, sender) DO UPDATE
    SET count = senders.count + EXCLUDED.count, bytes = senders.bytes + EXCLUDED.bytes;
    RETURN NULL;
END $$;
CREATE TRIGGER messages_added AFTER INSERT ON messages
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION messages_added();

CREATE FUNCTION messages_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users u SET queued = u.queued - o.c, bytes = u.bytes - o.b
    FROM (SELECT user_id, count(*) AS c, sum(size) AS b FROM old_rows GROUP BY user_id) o
    WHERE u.user_id = o.user_id;
    UPDATE senders s SET count = s.count - o.c, bytes = s.bytes - o.b
    FROM (SELECT user_id, sender, count(*) AS c, sum(size) AS b FROM old_rows
          WHERE sender IS NOT NULL GROUP BY user_id, sender) o
    WHERE s.user_id = o.user_id AND s.sender = o.sender;
    DELETE FROM senders s USING (SELECT DISTINCT user_id, sender FROM old_rows
                                 WHERE sender IS NOT NULL) o
    WHERE s.user_id = o.user_id AND s.sender = o.sender AND s.count <= 0;
    RETURN NULL;
END $$;
CREATE TRIGGER messages_removed AFTER DELETE ON messages
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION messages_removed();

CREATE FUNCTION acks_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users u SET acks = u.acks + n.c
    FROM (SELECT user_id, count(*) AS c FROM new_rows GROUP BY user_id) n
    WHERE u.user_id = n.user_id;
    RETURN NULL;
END $$;
CREATE TRIGGER acks_added AFTER INSERT ON acks
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION acks_added();

CREATE FUNCTION acks_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users u SET acks = u.acks - o.c
    FROM (SELECT user_id, count(*) AS c FROM old_rows GROUP BY user_id) o
    WHERE u.user_id = o.user_id;
    DELETE FROM replies r USING old_rows o WHERE r.user_id = o.user_id AND r.pos = o.pos;
    RETURN NULL;
END $$;
CREATE TRIGGER acks_removed AFTER DELETE ON acks
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION acks_removed();

CREATE FUNCTION replies_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE users u SET reply_bytes = u.reply_bytes + n.b
        FROM (SELECT user_id, sum(length(data)) AS b FROM new_rows GROUP BY user_id) n
        WHERE u.user_id = n.user_id;
    ELSE
        UPDATE users u SET reply_bytes = u.reply_bytes - o.b
        FROM (SELECT user_id, sum(length(data)) AS b FROM old_rows GROUP BY user_id) o
        WHERE u.user_id = o.user_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER replies_added AFTER INSERT ON replies
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION replies_changed();
CREATE TRIGGER replies_removed AFTER DELETE ON replies
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION replies_changed();

CREATE FUNCTION origins_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE users u SET origins = u.origins + n.c
        FROM (SELECT user_id, count(*) AS c FROM new_rows GROUP BY user_id) n
        WHERE u.user_id = n.user_id;
    ELSE
        UPDATE users u SET origins = u.origins - o.c
        FROM (SELECT user_id, count(*) AS c FROM old_rows GROUP BY user_id) o
        WHERE u.user_id = o.user_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER origins_added AFTER INSERT ON origins
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION origins_changed();
CREATE TRIGGER origins_removed AFTER DELETE ON origins
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION origins_changed();
