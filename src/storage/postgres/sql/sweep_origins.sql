WITH due AS (
    -- The batch as an array, looked up one key at a time: an IN over the subquery may be
    -- planned as a join that reads every user's row.
    SELECT user_id FROM users WHERE user_id = ANY(ARRAY(
        SELECT user_id FROM origins WHERE expires_at <= $1::bigint ORDER BY expires_at LIMIT $2::bigint))
    ORDER BY user_id FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM origins o USING due WHERE o.user_id = due.user_id AND o.expires_at <= $1::bigint
    RETURNING o.user_id
)
SELECT user_id, count(*) FROM gone GROUP BY user_id
