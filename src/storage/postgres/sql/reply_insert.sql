INSERT INTO replies (user_id, pos, client_id, data) VALUES ($1::text, $2::bigint, $3::text, $4::text)
