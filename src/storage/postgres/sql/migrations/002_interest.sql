-- Which nodes need the signals of which users: a node notes the users it has polls of or waits
-- for, until a minute after it last did, and signals about a user go only to those nodes (and
-- to the node whose operation caused them), on each node's own channel.
CREATE TABLE interest (
    user_id text NOT NULL,
    node text NOT NULL,
    until bigint NOT NULL,
    PRIMARY KEY (user_id, node)
);
CREATE INDEX interest_by_expiry ON interest (until);
