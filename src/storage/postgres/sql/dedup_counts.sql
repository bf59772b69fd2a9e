SELECT count(*) FILTER (WHERE client_id = $2::text), count(*) FROM dedup WHERE user_id = $1::text
