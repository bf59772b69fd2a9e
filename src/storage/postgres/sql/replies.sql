-- Driven from the targets, one index lookup of each table per target: the subquery's OFFSET 0
-- keeps the planner from merging acks with replies first, which walks acks' whole index when
-- replies is small (a cost that grows with every user's acks, not with the targets).
SELECT t.i, r.client_id, r.data
FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS t(u, p, i)
CROSS JOIN LATERAL (
    SELECT r.client_id, r.data FROM replies r
    WHERE r.user_id = t.u AND r.pos = t.p
      AND EXISTS (SELECT 1 FROM acks a
                  WHERE a.user_id = t.u AND a.pos = t.p AND a.expires_at > $3::bigint)
    OFFSET 0
) r
ORDER BY t.i, r.client_id
