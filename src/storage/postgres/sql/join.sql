INSERT INTO rooms (room, user_id, client_id) VALUES ($1::text, $2::text, $3::text)
ON CONFLICT DO NOTHING
