/*
 * computed_traits.h
 *	  Computed traits: per-profile values kept current as events arrive.
 *	  A trait's state over a set of events (what its kind needs: a count, a
 *	  sum, extremes, the first and last values, the distinct values) can be
 *	  combined with another's exactly, so the state of a profile is kept per
 *	  profile id the events were stored with and a canonical profile's value
 *	  combines the states of the profiles merged into it.
 */
#ifndef CDP_COMPUTED_TRAITS_H
#define CDP_COMPUTED_TRAITS_H

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "pg_cdp.h"

/* distinct values a state keeps (the smallest in text order): documented */
#define CDP_TRAIT_MAX_VALUES 1000

/*
 * Bytes of JSON text a value may have to be counted as a distinct value:
 * with it a state's values stay under about 2 MB whatever events hold.
 * Documented.
 */
#define CDP_TRAIT_MAX_VALUE_BYTES 2048

typedef enum CdpTraitKind
{
	CDP_TRAIT_COUNT,
	CDP_TRAIT_SUM,
	CDP_TRAIT_AVG,
	CDP_TRAIT_MIN,
	CDP_TRAIT_MAX,
	CDP_TRAIT_FIRST,
	CDP_TRAIT_LAST,
	CDP_TRAIT_MOST_FREQUENT,
	CDP_TRAIT_UNIQUE_COUNT,
	CDP_TRAIT_UNIQUE_LIST
} CdpTraitKind;

/* what decides whether an event counts, and what of it: parsed once */
typedef struct CdpTraitSpec
{
	CdpTraitKind kind;
	int			npath;			/* property path (dotted), 0: none */
	char	  **path;
	List	   *conditions;		/* filter: every one must hold */
	bool		keep_oldest;	/* states keep their oldest event's time:
								 * only a windowed trait's need it (a
								 * caller that knows sets it) */
} CdpTraitSpec;

/* a value a state keeps: its JSON text (the order and identity of values) */
typedef struct CdpTraitValue
{
	char	   *text;
	int64		count;
} CdpTraitValue;

/* a trait's state over some events */
typedef struct CdpTraitState
{
	CdpTraitKind kind;
	int64		n;				/* events counted (count), numbers summed (sum, avg) */
	Numeric		sum;			/* NULL: none */
	Numeric		lo;
	Numeric		hi;
	bool		has_first;
	TimestampTz first_at;
	char	   *first;			/* JSON text */
	bool		has_last;
	TimestampTz last_at;
	char	   *last;
	int			nvalues;		/* distinct values, sorted by text */
	int			maxvalues;
	CdpTraitValue *values;
	bool		has_oldest;		/* the oldest event counted, for windows */
	TimestampTz oldest;
} CdpTraitState;

extern CdpTraitKind CdpTraitKindOf(const char *kind);
extern CdpTraitSpec *CdpParseTraitSpec(const char *kind, const char *property, Jsonb *filter);
extern bool CdpTraitFilterMatches(const CdpTraitSpec *spec, Jsonb *properties);
extern bool CdpTraitPropertyValue(const CdpTraitSpec *spec, Jsonb *properties, JsonbValue *out);
extern CdpTraitState *CdpNewTraitState(CdpTraitKind kind);
extern bool CdpTraitStateAdd(CdpTraitSpec *spec, CdpTraitState *state, TimestampTz ts,
							 Jsonb *properties);
extern bool CdpTraitStateAddValue(CdpTraitSpec *spec, CdpTraitState *state, TimestampTz ts,
								  JsonbValue *v);
extern void CdpTraitStateCombine(CdpTraitState *into, const CdpTraitState *from);
extern void CdpTraitStateCombineCopy(CdpTraitState *into, const CdpTraitState *from);
extern CdpTraitState *CdpTraitStateCopy(const CdpTraitState *state);
extern void CdpPushJsonbKey(JsonbParseState **ps, const char *key);
extern void CdpJsonbDocumentValue(Jsonb *doc, JsonbValue *v);
extern Jsonb *CdpTraitStateToJsonb(const CdpTraitState *state);
extern bool CdpTraitStatePush(JsonbParseState **ps, const char *key,
							  const CdpTraitState *state);
extern CdpTraitState *CdpTraitStateFromJsonb(CdpTraitKind kind, Jsonb *state);
extern Jsonb *CdpTraitStateValue(const CdpTraitState *state);
extern bool CdpTraitStateValueOf(const CdpTraitState *state, JsonbValue *out);

/* ingest: the computed traits of stored events, gathered then written */
typedef struct CdpTraitDeltas CdpTraitDeltas;

extern CdpTraitDeltas *CdpNewTraitDeltas(MemoryContext parent);
extern void CdpUpdateComputedTraits(CdpMessage **msgs, int n, CdpTraitDeltas *deltas);
extern void CdpMergeTraitDeltas(CdpTraitDeltas *into, CdpTraitDeltas *from);
extern bool CdpTraitDeltasFull(CdpTraitDeltas *deltas);
extern void CdpWriteTraitDeltas(CdpTraitDeltas *deltas);

/* audiences: evaluate these profiles' memberships when the transaction commits */
extern void CdpProfilesChanged(const int64 *profile_ids, int n);
extern bool CdpAudiencesExist(void);

#endif
