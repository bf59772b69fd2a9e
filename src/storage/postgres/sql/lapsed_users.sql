SELECT DISTINCT user_id FROM (
    SELECT user_id FROM clients WHERE seen_until <= $1::bigint ORDER BY seen_until LIMIT $2::bigint
) AS lapsed
