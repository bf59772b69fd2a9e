DELETE FROM dedup WHERE (user_id, client_id, msg_id) IN (
    SELECT user_id, client_id, msg_id FROM dedup WHERE until <= $1::bigint
    ORDER BY until LIMIT $2::bigint)
