-- Rows of users with nothing left (no client, message, ack record or origin) are removed by
-- the reap (`forget_users.sql`). The highest position any of them had is kept here, and a
-- user's positions never start below it: a user who comes back gets positions above any they
-- had before, so no cursor of theirs from before can confirm a new message.
INSERT INTO meta (key, value) VALUES ('forgotten_pos', '0') ON CONFLICT (key) DO NOTHING;
