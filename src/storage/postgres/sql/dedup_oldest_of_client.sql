SELECT client_id, msg_id, outcome IS NULL AND until > $3::bigint FROM dedup
WHERE user_id = $1::text AND client_id = $2::text ORDER BY seq LIMIT $4::bigint
