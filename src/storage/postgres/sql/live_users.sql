SELECT DISTINCT user_id FROM clients WHERE seen_until > $1::bigint AND polled
