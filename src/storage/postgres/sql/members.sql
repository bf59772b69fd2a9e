SELECT user_id, client_id FROM rooms WHERE room = $1::text
