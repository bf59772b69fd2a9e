DELETE FROM signal_bodies WHERE id IN (
    SELECT id FROM signal_bodies WHERE created_at <= $1::bigint ORDER BY created_at LIMIT $2::bigint)
