WITH due AS (
    -- The batch as an array, looked up one key at a time: an IN over the subquery may be
    -- planned as a join that reads every user's row.
    SELECT user_id FROM users WHERE user_id = ANY(ARRAY(
        SELECT user_id FROM acks WHERE expires_at <= $1::bigint ORDER BY expires_at LIMIT $2::bigint))
    ORDER BY user_id FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM acks a USING due WHERE a.user_id = due.user_id AND a.expires_at <= $1::bigint
    RETURNING a.user_id
)
SELECT user_id, count(*) FROM gone GROUP BY user_id
