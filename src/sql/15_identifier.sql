-- cdp.identifier: a typed, normalised identifier, text form 'type:value'.
-- Ordering is bytewise (type, then value), the same in every database.

CREATE TYPE cdp.identifier;

CREATE FUNCTION cdp.identifier_in(cstring) RETURNS cdp.identifier
AS 'MODULE_PATHNAME', 'cdp_identifier_in' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION cdp.identifier_out(cdp.identifier) RETURNS cstring
AS 'MODULE_PATHNAME', 'cdp_identifier_out' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION cdp.identifier_recv(internal) RETURNS cdp.identifier
AS 'MODULE_PATHNAME', 'cdp_identifier_recv' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION cdp.identifier_send(cdp.identifier) RETURNS bytea
AS 'MODULE_PATHNAME', 'cdp_identifier_send' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE TYPE cdp.identifier (
    INPUT = cdp.identifier_in,
    OUTPUT = cdp.identifier_out,
    RECEIVE = cdp.identifier_recv,
    SEND = cdp.identifier_send,
    INTERNALLENGTH = VARIABLE,
    STORAGE = extended,
    CATEGORY = 'S'
);
COMMENT ON TYPE cdp.identifier IS
    'typed, normalised identifier: ''email:alice@example.com'', ''user_id:42''';

CREATE FUNCTION cdp.identifier(type text, value text) RETURNS cdp.identifier
AS 'MODULE_PATHNAME', 'cdp_identifier_make' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION cdp.id_type(cdp.identifier) RETURNS text
AS 'MODULE_PATHNAME', 'cdp_id_type' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION cdp.id_value(cdp.identifier) RETURNS text
AS 'MODULE_PATHNAME', 'cdp_id_value' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE CAST (text AS cdp.identifier) WITH INOUT AS ASSIGNMENT;
CREATE CAST (cdp.identifier AS text) WITH INOUT AS ASSIGNMENT;

CREATE FUNCTION cdp.identifier_eq(cdp.identifier, cdp.identifier) RETURNS bool
AS 'MODULE_PATHNAME', 'cdp_identifier_eq' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
CREATE FUNCTION cdp.identifier_ne(cdp.identifier, cdp.identifier) RETURNS bool
AS 'MODULE_PATHNAME', 'cdp_identifier_ne' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
CREATE FUNCTION cdp.identifier_lt(cdp.identifier, cdp.identifier) RETURNS bool
AS 'MODULE_PATHNAME', 'cdp_identifier_lt' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
CREATE FUNCTION cdp.identifier_le(cdp.identifier, cdp.identifier) RETURNS bool
AS 'MODULE_PATHNAME', 'cdp_identifier_le' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
CREATE FUNCTION cdp.identifier_gt(cdp.identifier, cdp.identifier) RETURNS bool
AS 'MODULE_PATHNAME', 'cdp_identifier_gt' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
CREATE FUNCTION cdp.identifier_ge(cdp.identifier, cdp.identifier) RETURNS bool
AS 'MODULE_PATHNAME', 'cdp_identifier_ge' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
CREATE FUNCTION cdp.identifier_cmp(cdp.identifier, cdp.identifier) RETURNS int
AS 'MODULE_PATHNAME', 'cdp_identifier_cmp' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
CREATE FUNCTION cdp.identifier_hash(cdp.identifier) RETURNS int
AS 'MODULE_PATHNAME', 'cdp_identifier_hash' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;
CREATE FUNCTION cdp.identifier_hash_extended(cdp.identifier, bigint) RETURNS bigint
AS 'MODULE_PATHNAME', 'cdp_identifier_hash_extended' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF;

CREATE OPERATOR cdp.= (LEFTARG = cdp.identifier, RIGHTARG = cdp.identifier,
    PROCEDURE = cdp.identifier_eq, COMMUTATOR = OPERATOR(cdp.=), NEGATOR = OPERATOR(cdp.<>),
    RESTRICT = eqsel, JOIN = eqjoinsel, HASHES, MERGES);
CREATE OPERATOR cdp.<> (LEFTARG = cdp.identifier, RIGHTARG = cdp.identifier,
    PROCEDURE = cdp.identifier_ne, COMMUTATOR = OPERATOR(cdp.<>), NEGATOR = OPERATOR(cdp.=),
    RESTRICT = neqsel, JOIN = neqjoinsel);
CREATE OPERATOR cdp.< (LEFTARG = cdp.identifier, RIGHTARG = cdp.identifier,
    PROCEDURE = cdp.identifier_lt, COMMUTATOR = OPERATOR(cdp.>), NEGATOR = OPERATOR(cdp.>=),
    RESTRICT = scalarltsel, JOIN = scalarltjoinsel);
CREATE OPERATOR cdp.<= (LEFTARG = cdp.identifier, RIGHTARG = cdp.identifier,
    PROCEDURE = cdp.identifier_le, COMMUTATOR = OPERATOR(cdp.>=), NEGATOR = OPERATOR(cdp.>),
    RESTRICT = scalarlesel, JOIN = scalarlejoinsel);
CREATE OPERATOR cdp.> (LEFTARG = cdp.identifier, RIGHTARG = cdp.identifier,
    PROCEDURE = cdp.identifier_gt, COMMUTATOR = OPERATOR(cdp.<), NEGATOR = OPERATOR(cdp.<=),
    RESTRICT = scalargtsel, JOIN = scalargtjoinsel);
CREATE OPERATOR cdp.>= (LEFTARG = cdp.identifier, RIGHTARG = cdp.identifier,
    PROCEDURE = cdp.identifier_ge, COMMUTATOR = OPERATOR(cdp.<=), NEGATOR = OPERATOR(cdp.<),
    RESTRICT = scalargesel, JOIN = scalargejoinsel);

CREATE OPERATOR CLASS cdp.identifier_ops DEFAULT FOR TYPE cdp.identifier USING btree AS
    OPERATOR 1 cdp.<,
    OPERATOR 2 cdp.<=,
    OPERATOR 3 cdp.=,
    OPERATOR 4 cdp.>=,
    OPERATOR 5 cdp.>,
    FUNCTION 1 cdp.identifier_cmp(cdp.identifier, cdp.identifier);

CREATE OPERATOR CLASS cdp.identifier_hash_ops DEFAULT FOR TYPE cdp.identifier USING hash AS
    OPERATOR 1 cdp.=,
    FUNCTION 1 cdp.identifier_hash(cdp.identifier),
    FUNCTION 2 cdp.identifier_hash_extended(cdp.identifier, bigint);
