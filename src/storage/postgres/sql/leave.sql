DELETE FROM rooms WHERE room = $1::text AND user_id = $2::text AND client_id = $3::text
