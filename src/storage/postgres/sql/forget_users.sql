-- Removes the rows of these users (locked by the caller) that nothing needs any more: no
-- client record, no message, no ack record (nor reply), no origin. What `MemoryStorage` keeps
-- per user goes with them (the last position, the watermarks); dedup records, a user's own
-- memberships and data are kept apart, as there. The highest position among them raises
-- `forgotten_pos`, under which no user's positions start: a user who comes back gets
-- positions above any cursor they had.
WITH gone AS (
    DELETE FROM users u
    WHERE u.user_id = ANY($1::text[]) AND u.queued <= 0 AND u.acks <= 0 AND u.origins <= 0
      AND u.reply_bytes <= 0
      AND NOT EXISTS (SELECT 1 FROM clients c WHERE c.user_id = u.user_id)
    RETURNING u.user_id, u.last_pos
), marks AS (
    DELETE FROM watermarks w USING gone WHERE w.user_id = gone.user_id
), raised AS (
    UPDATE meta SET value = greatest(value::bigint, (SELECT max(last_pos) FROM gone))::text
    WHERE key = 'forgotten_pos' AND EXISTS (SELECT 1 FROM gone)
)
SELECT count(*) FROM gone
