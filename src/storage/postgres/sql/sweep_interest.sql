DELETE FROM interest WHERE (user_id, node) IN (
    SELECT user_id, node FROM interest WHERE until <= $1::bigint ORDER BY until LIMIT $2::bigint)
