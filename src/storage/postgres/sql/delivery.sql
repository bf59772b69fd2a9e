-- 0: delivered, 1: pending, 2: expired; in the order of the targets.
SELECT CASE
    WHEN t.p <= coalesce(CASE WHEN t.c = '' THEN w.wm
                              WHEN t.ns = ANY(c.namespaces) THEN c.cursor END, 0) THEN 0
    WHEN m.expires_at > $5::bigint THEN 1
    ELSE 2 END
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY AS t(u, c, ns, p, i)
LEFT JOIN watermarks w ON w.user_id = t.u AND w.ns = t.ns
LEFT JOIN clients c ON t.c <> '' AND c.user_id = t.u AND c.client_id = t.c
LEFT JOIN messages m ON m.user_id = t.u AND m.pos = t.p
ORDER BY t.i
