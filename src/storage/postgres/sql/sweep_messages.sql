-- Expired messages of a bounded number of users, whose rows are locked first (in order,
-- skipping users busy right now: the next sweep takes them); how many per user, whose rows
-- may then be forgotten.
WITH due AS (
    -- The batch as an array, looked up one key at a time: an IN over the subquery may be
    -- planned as a join that reads every user's row.
    SELECT user_id FROM users WHERE user_id = ANY(ARRAY(
        SELECT user_id FROM messages WHERE expires_at <= $1::bigint ORDER BY expires_at LIMIT $2::bigint))
    ORDER BY user_id FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM messages m USING due WHERE m.user_id = due.user_id AND m.expires_at <= $1::bigint
    RETURNING m.user_id
)
SELECT user_id, count(*) FROM gone GROUP BY user_id
