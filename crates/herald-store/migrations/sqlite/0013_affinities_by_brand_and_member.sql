-- The brand index ordered by member within each brand, covering the score:
-- an audience range (members after one id up to another) then reads only
-- the affinities of the alert's brands in that range, one index range per
-- brand, instead of every affinity of every member in it (an alert over 3
-- of 50 brands reads a sixteenth as many rows). It also still serves
-- per-brand lookups and the brand's ON DELETE CASCADE, as the index it
-- replaces did.
DROP INDEX affinities_by_brand;
CREATE INDEX affinities_by_brand ON affinities (brand_id, member_id, score);
