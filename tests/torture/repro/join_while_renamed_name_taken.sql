-- setup
CREATE SCHEMA "{schema}";
CREATE TABLE "{schema}"."tt_a" ("id" integer NOT NULL, "v" text, PRIMARY KEY ("id"));
-- workload
CREATE TABLE "{schema}"."tt_b" ("id" integer NOT NULL, "w" integer, PRIMARY KEY ("id"));
INSERT INTO "{schema}"."tt_b" VALUES (1, 10);
BEGIN;
ALTER TABLE "{schema}"."tt_b" RENAME TO "tt_f";
SELECT pg_sleep(5);
ALTER TABLE "{schema}"."tt_a" RENAME TO "tt_b";
COMMIT;
SELECT pg_sleep(3);
INSERT INTO "{schema}"."tt_f" VALUES (2, 20), (3, 30);
UPDATE "{schema}"."tt_f" SET "w" = 11 WHERE "id" = 1;
DELETE FROM "{schema}"."tt_f" WHERE "id" = 2;
INSERT INTO "{schema}"."tt_b" VALUES (1, 'a1');
DROP TABLE "{schema}"."tt_f";
