-- Events no longer carry a foreign key to their stream row. Every event is written by this
-- store's own functions, in the transaction that creates or locks the stream's row (which
-- is never deleted), so the key checked nothing they do not already guarantee; its check
-- ran once per inserted event and cost a third of a 100-event append's time (`annals bench
-- append` case (a) against one multi-row INSERT: 0.30x-0.45x with it, 0.55x-0.66x
-- without, alternating runs on one server).
ALTER TABLE {schema}.events DROP CONSTRAINT IF EXISTS events_stream_id_fkey;
