SELECT client_id FROM clients WHERE user_id = $1::text AND seen_until > $2::bigint AND polled
