-- 003_claim_without_bitmap_scans: the claim no longer revisits every lease finished since the last VACUUM.
--
-- The claim counts each webhook's leases through the partial index delivery_leased. A delivery's entry stays in
-- that index after its result is written (pointing at a dead row version) until VACUUM removes it, and
-- autovacuum looks at a table at most once a minute. PostgreSQL chose a bitmap scan for the count, and a bitmap
-- scan neither skips entries already known dead nor marks them: every claim fetched every heap page holding
-- any row leased since the last VACUUM. An index scan marks a dead entry the first time it meets it and skips
-- it from then on. Measured on one webhook, claiming 50 and recording 50 at a time through 60,000 deliveries:
-- claims took 2.3 ms each over the first tenth and 5.2 ms over the last (2,310 heap pages read to count the
-- leases); without bitmap scans, 1.9 ms and 1.9 ms. Nothing else in the claim wants a bitmap scan: it walks
-- delivery_due in order and finds rows by primary key.
ALTER FUNCTION dispatcher_claim(integer, integer, float8, text, float8[], float8, float8, uuid[])
    SET enable_bitmapscan = off;
