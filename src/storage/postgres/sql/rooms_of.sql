SELECT room FROM rooms WHERE user_id = $1::text AND client_id = $2::text
