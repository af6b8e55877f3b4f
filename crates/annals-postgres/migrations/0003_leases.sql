-- Annals PostgreSQL schema, version 3: consumer-group members and partition leases, for
-- competing consumers (several processes sharing one group's work).

-- A member is live while its heartbeat has not expired.
CREATE TABLE {schema}.group_members (
    group_name text        NOT NULL,
    member     text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (group_name, member)
);

-- Who handles a partition of a group's feed, until when. Expiry is decided by this
-- server's clock only, so members' clocks need not agree.
CREATE TABLE {schema}.leases (
    group_name text        NOT NULL,
    partition  integer     NOT NULL CHECK (partition >= 0),
    owner      text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (group_name, partition)
);

-- One round trip per heartbeat: record the member, renew its leases, claim free or expired
-- partitions up to its fair share (partitions / live members, rounded up), and answer what
-- it holds. Claims race safely: ON CONFLICT re-checks the latest row under its lock, so a
-- lease someone else renewed or took meanwhile is left alone.
CREATE FUNCTION {schema}.acquire_leases(
    p_group text, p_member text, p_partitions integer, p_ttl interval,
    OUT held integer[], OUT fair_share integer, OUT live_members integer
) LANGUAGE plpgsql AS $$
DECLARE
    v_held integer;
BEGIN
    INSERT INTO {schema}.group_members (group_name, member, expires_at)
    VALUES (p_group, p_member, now() + p_ttl)
    ON CONFLICT (group_name, member) DO UPDATE SET expires_at = EXCLUDED.expires_at;
    -- Forget members gone for a day (housekeeping only).
    DELETE FROM {schema}.group_members
    WHERE group_name = p_group AND expires_at < now() - interval '1 day';

    SELECT count(*) INTO live_members FROM {schema}.group_members
    WHERE group_name = p_group AND expires_at > now();
    fair_share := (p_partitions + greatest(live_members, 1) - 1) / greatest(live_members, 1);

    UPDATE {schema}.leases SET expires_at = now() + p_ttl
    WHERE group_name = p_group AND owner = p_member AND partition < p_partitions;
    GET DIAGNOSTICS v_held = ROW_COUNT;

    IF v_held < fair_share THEN
        INSERT INTO {schema}.leases AS l (group_name, partition, owner, expires_at)
        SELECT p_group, p, p_member, now() + p_ttl
        FROM generate_series(0, p_partitions - 1) AS p
        WHERE NOT EXISTS (
            SELECT 1 FROM {schema}.leases x
            WHERE x.group_name = p_group AND x.partition = p AND x.expires_at > now())
        ORDER BY p
        LIMIT fair_share - v_held
        ON CONFLICT (group_name, partition) DO UPDATE
            SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at
            WHERE l.expires_at <= now();
    END IF;

    SELECT coalesce(array_agg(partition ORDER BY partition), '{}') INTO held
    FROM {schema}.leases
    WHERE group_name = p_group AND owner = p_member AND partition < p_partitions;
END
$$;
