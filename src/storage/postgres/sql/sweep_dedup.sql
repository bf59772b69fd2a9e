WITH gone AS (
    DELETE FROM dedup WHERE (user_id, client_id, msg_id) IN (
        SELECT user_id, client_id, msg_id FROM dedup WHERE until <= $1::bigint
        ORDER BY until LIMIT $2::bigint)
    RETURNING user_id
)
SELECT user_id, count(*) FROM gone GROUP BY user_id
