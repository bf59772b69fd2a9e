SELECT body FROM signal_bodies WHERE id = $1::bigint
