-- Interest that has lapsed, a batch at a time. Rows another transaction holds (a note renewing
-- them) are left for the next sweep rather than waited for, so a sweep and a note never wait
-- for each other in a circle.
DELETE FROM interest WHERE (user_id, node) IN (
    SELECT user_id, node FROM interest WHERE until <= $1::bigint ORDER BY until LIMIT $2::bigint
    FOR UPDATE SKIP LOCKED)
