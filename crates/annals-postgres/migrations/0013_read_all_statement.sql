-- Annals PostgreSQL schema, version 13: read-all pages are one statement the store sends,
-- no longer a function.
--
-- The function (versions 4, 11, 12) fixed its plan with its own settings, which cost a plan
-- at every call (PostgreSQL 15 does not keep SQL functions' plans) and a copy of every page
-- into a tuple store; its stream lookups were not memoized (the lifecycle conditions made
-- them depend on each event). The store now sends the page as a prepared statement on
-- connections of its own, opened with those settings, its plan made once per connection,
-- and its rows stream out as found (`Sql::read_all`).

DROP FUNCTION {schema}.read_all_page(xid8, bigint, text[], text[], bigint, bigint, bigint, bigint);
