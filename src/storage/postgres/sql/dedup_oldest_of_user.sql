SELECT client_id, msg_id, outcome IS NULL AND until > $2::bigint FROM dedup
WHERE user_id = $1::text ORDER BY seq LIMIT $3::bigint
