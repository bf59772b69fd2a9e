SELECT client_id, cursor, namespaces, seen_until, polled FROM clients WHERE user_id = $1::text
