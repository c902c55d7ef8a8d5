/*
 * identity.h
 *	  Identity resolution: the rules, the in-memory identity graph the
 *	  algorithm runs on (shared by online resolution and bulk rebuild), and
 *	  the entry points used by ingest and the SQL functions.
 */
#ifndef CDP_IDENTITY_H
#define CDP_IDENTITY_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "storage/itemptr.h"
#include "utils/hsearch.h"

#include "identifier.h"

/* advisory lock taken by every transaction that changes the identity graph */
#define CDP_LOCK_IDENTITY		3

/*
 * A message links at most this many identifiers (the first ones it carries):
 * it asserts every pair of them, so its evidence grows with the square.
 */
#define CDP_MAX_MESSAGE_IDS		32

typedef struct IdRule
{
	int			priority;		/* 1 = strongest */
	int			max_per_profile;	/* 0 = no limit */
	int64		window_us;		/* 0 = ever */
} IdRule;

typedef struct BlockedValue
{
	char	   *id_type;		/* NULL = every type */
	int			type_len;
	char	   *pattern;		/* lower-cased when not a regex */
	int			pattern_len;
	bool		is_regex;
	text	   *regex;			/* the pattern, for the regex matcher */
} BlockedValue;

typedef struct IdentityRules
{
	HTAB	   *by_type;		/* type name -> IdRuleEntry */
	IdRule		fallback;		/* the '*' rule */
	List	   *blocked;		/* BlockedValue * */
	int			max_merges;		/* hub guard */
} IdentityRules;

typedef struct IdNode IdNode;
typedef struct ProfNode ProfNode;

/*
 * Fields ordered for packing: a rebuild holds ten million of these.  Nodes
 * and profiles name each other by 32-bit refs (place + 1, 0 = none) rather
 * than pointers; CdpNodeAt and CdpProfAt turn a ref into the node.
 */
struct IdNode
{
	union
	{
		uint32		linked_at[2];	/* when it was linked: CdpNodeLinkedAt */
		uint32		stored;		/* rebuild, after the replay: its profile in
								 * cdp.identities (a ProfNode ref), 0 none */
	}			u;
	union
	{
		uint32		message;	/* online: the message that attached it
								 * (IdentityGraph.message_ids place + 1) */
		uint32		seq;		/* rebuild: the evidence row that attached it
								 * (its seq less the first row's) */
	}			src;
	uint32		next_member;	/* node ref */
	uint32		prof;			/* its profile (follow into); 0 detached */
	uint16		type_slot;		/* the identifier's type (IdentityGraph.slot_names) */
	uint16		value_len;
	uint8		blocked:2;		/* 0 not yet checked, 1 no, 2 blocked */
	bool		attached:1;		/* belongs to a profile */
	bool		is_new:1;		/* attached during this run */
	bool		in_members:1;
	char		value[FLEXIBLE_ARRAY_MEMBER];	/* the identifier's value */
};

/* nodes are 4-byte aligned: the time is kept as two halves */
static inline TimestampTz
CdpNodeLinkedAt(const IdNode *node)
{
	TimestampTz at;

	memcpy(&at, node->u.linked_at, sizeof(at));
	return at;
}

static inline void
CdpNodeSetLinkedAt(IdNode *node, TimestampTz at)
{
	memcpy(node->u.linked_at, &at, sizeof(at));
}

/* type counts of a profile kept in the node while every one is small */
#define PROF_SMALL_COUNTS	4

struct ProfNode
{
	int64		profile_id;		/* the key */
	uint32		self;			/* its own ref */
	uint32		into;			/* merged into (a ref); 0 while canonical */
	uint32		members;		/* node refs: the first and last member */
	uint32		members_tail;
	int32		nmembers;
	int32		merges_absorbed;
	union
	{
		uint8		small[PROF_SMALL_COUNTS];
		uint32		wide;		/* its place in IdentityGraph.wide_counts */
	}			counts;			/* members per type slot */
	uint16		ntype_counts;	/* 0: counts.small, else the wide counts' length */
	bool		is_new:1;		/* made during this run */
	bool		members_loaded:1;
	bool		claimed:1;		/* rebuild: some replayed profile lands here */
	bool		has_record:1;	/* rebuild: its profile record is noted */
};

/*
 * What online resolution knows of a stored profile beside the graph (a
 * rebuild needs neither: its ranks are the ids, and it reads no versions).
 */
typedef struct ProfOnline
{
	int64		rank;			/* merges go into the lowest (rank, id) */
	int32		version;		/* profile_records.version as first read, -1 unknown */
	ItemPointerData row;		/* its record's version as this batch locked it, if it did */
} ProfOnline;

typedef struct IdMerge
{
	int64		from_profile;
	int64		into_profile;
	const char *message_id;
	TimestampTz at;
	char	   *reason;
} IdMerge;

typedef struct IdViolation
{
	CdpIdentifier *identifier;
	const char *message_id;
	TimestampTz at;
	char	   *rule;
	char	   *detail;
} IdViolation;

/* one cdp.identity_splits row */
typedef struct SplitRule
{
	CdpIdentifier *keep_out;
	CdpIdentifier **members;	/* sorted, for bsearch */
	int			nmembers;
	CdpIdentifier **anchors;
	int			nanchors;
} SplitRule;

struct IdentityGraph;
typedef void (*LoadMembersFn) (struct IdentityGraph *g, ProfNode *p);
typedef int64 (*NewProfileIdFn) (struct IdentityGraph *g);

/* a growable array whose elements never move (identity_store.c) */
typedef struct CdpPagedArray
{
	char	  **pages;
	uint32		npages;
	uint32		maxpages;
	uint32		count;
	Size		elem_size;
} CdpPagedArray;

/*
 * Identifier nodes, each followed by its identifier's bytes, packed into
 * blocks (identity_store.c); a node is named by its place in them.
 */
typedef struct CdpNodeArena
{
	char	  **blocks;
	uint32	   *used;			/* bytes used in each block */
	uint32		nblocks;
	uint32		maxblocks;
	uint32	   *by_address;		/* block numbers in address order */
	uint32		last_size;		/* the size of the last block */
	uint32		count;			/* nodes */
} CdpNodeArena;

/*
 * Open addressing: each slot a ref and a byte of its entry's hash (0 =
 * empty), which turns away nearly every probe for another entry unread.
 * Twelve slots share a cache line (their tags, then their refs), so a
 * probe costs one cache miss; a key's probe starts at its bucket's first.
 */
#define CDP_BUCKET_SLOTS	12
typedef struct CdpSlotBucket
{
	uint8		tags[CDP_BUCKET_SLOTS];
	uint32		unused;
	uint32		refs[CDP_BUCKET_SLOTS];
} CdpSlotBucket;

typedef struct CdpSlotTable
{
	CdpSlotBucket *buckets;		/* aligned to a cache line */
	void	   *allocated;		/* where buckets was carved from */
	uint32		bmask;			/* buckets - 1 (a power of 2) */
	uint32		used;
} CdpSlotTable;

/* a walk over the graph's nodes in the order they were made */
typedef struct CdpNodeIter
{
	uint32		block;
	uint32		offset;
} CdpNodeIter;

/* the identity graph the algorithm runs on */
typedef struct IdentityGraph
{
	MemoryContext cxt;
	IdentityRules *rules;
	CdpNodeArena nodes;			/* IdNode + identifier */
	CdpSlotTable node_index;	/* identifier -> node */
	CdpPagedArray profs;		/* ProfNode */
	CdpPagedArray prof_online;	/* ProfOnline, by ProfNode ref - 1; online only */
	int32	  **wide_counts;	/* type counts of profiles they outgrew */
	const char **message_ids;	/* online: the messages nodes were attached by */
	uint32		nmessage_ids;
	uint32		maxmessage_ids;
	uint32		nwide_counts;
	uint32		maxwide_counts;
	CdpSlotTable prof_index;	/* profile id -> ProfNode */
	HTAB	   *type_slots;		/* type name -> slot */
	int			ntypes;
	char	  **slot_names;		/* slot -> type name */
	uint8	   *slot_lens;		/* slot -> its length */
	uint32	   *slot_hashes;	/* slot -> its hash */
	const IdRule **slot_rules;	/* slot -> its rule, NULL until asked */
	int			nslot_names;
	List	   *splits;			/* SplitRule * */
	CdpIdentifier **split_keep_outs;	/* theirs, sorted; NULL: look at each */
	int			nsplit_keep_outs;
	LoadMembersFn load_members; /* online: fetch a profile's identifiers */
	NewProfileIdFn new_profile_id;
	void	   *private;
	bool		quiet;			/* rebuild: keep no merge or violation records */
	bool		replay;			/* rebuild: nodes keep IdNode.src.seq, no ProfOnline */
	List	   *merges;			/* IdMerge *, in order */
	List	   *violations;		/* IdViolation * */
} IdentityGraph;

/* one message's identifiers, as the algorithm sees them */
typedef struct IdMessage
{
	CdpIdentifier **ids;
	int			nids;
	TimestampTz at;
	const char *message_id;
	int64		seq;			/* rebuild: its evidence row */
	uint32		seq_offset;		/* rebuild: seq less the first row's */
	int64		created_hint;	/* rebuild: the id online resolution gave it */
	uint32	   *hashes;			/* CdpGraphIdentifierHash of each id, or NULL */
	/* results */
	int64		profile;		/* 0: no usable identifier */
	bool		changed;		/* the graph changed (violations alone do not) */
	bool		violated;		/* a rule dropped one of its identifiers */
	bool		*linked;		/* which ids were linked */
	int64		created_profile;
} IdMessage;

/* identity_rules.c */
extern IdentityRules *CdpLoadIdentityRules(void);
extern uint64 CdpIdentityRulesCopy(void);
extern uint64 CdpIdentitySplitsCopy(void);
extern List *CdpCachedSplits(void);
extern void CdpUseCachedSplits(IdentityGraph *g);
extern void CdpIdentityCacheCallback(Datum arg, Oid relid);
extern const IdRule *CdpRuleFor(IdentityRules *rules, const char *type, int type_len);
extern bool CdpIsBlocked(IdentityRules *rules, const CdpIdentifier *id);

/* identity_store.c */
extern IdentityGraph *CdpNewIdentityGraph(IdentityRules *rules, MemoryContext cxt, bool replay);
extern IdNode *CdpGraphNode(IdentityGraph *g, CdpIdentifier *id, bool create);
extern uint32 CdpGraphIdentifierHash(const CdpIdentifier *id);
extern IdNode *CdpGraphNodeHashed(IdentityGraph *g, CdpIdentifier *id, uint32 hash, bool create);
extern void CdpGraphPrefetchNodeSlots(IdentityGraph *g, uint32 hash);
extern void CdpGraphPrefetchNode(IdentityGraph *g, uint32 hash, uint32 value_len);
extern void CdpGraphPrefetchProfileSlots(IdentityGraph *g, int64 profile_id);
extern void CdpGraphPrefetchProfile(IdentityGraph *g, int64 profile_id);
extern ProfNode *CdpGraphProfile(IdentityGraph *g, int64 profile_id, bool create);
extern ProfNode *CdpCanonical(IdentityGraph *g, int64 profile_id);
extern void CdpGraphReserve(IdentityGraph *g, double identifiers, double profiles);
extern uint32 CdpGraphNodeCount(IdentityGraph *g);
extern IdNode *CdpGraphNextNode(IdentityGraph *g, CdpNodeIter *it);
extern uint32 CdpGraphProfileCount(IdentityGraph *g);
extern ProfNode *CdpGraphProfileAt(IdentityGraph *g, uint32 i);

extern uint32 CdpGraphNodeRef(IdentityGraph *g, const IdNode *node);
extern const IdRule *CdpSlotRule(IdentityGraph *g, int slot);
extern CdpIdentifier *CdpNodeIdentifier(IdentityGraph *g, const IdNode *node);

/* a hint to start loading addr into the cache (identity_store.c's lookahead) */
#if defined(__GNUC__) || defined(__clang__)
#define CdpPrefetch(addr)	__builtin_prefetch(addr)
#else
#define CdpPrefetch(addr)	((void) (addr))
#endif

#define CDP_PAGE_ELEMS		1024
#define CDP_BLOCK_BITS		20
#define CDP_UNIT_BITS		2

/* the node a ref names (not 0) */
static inline IdNode *
CdpNodeAt(IdentityGraph *g, uint32 ref)
{
	uint32		r = ref - 1;

	return (IdNode *) (g->nodes.blocks[r >> (CDP_BLOCK_BITS - CDP_UNIT_BITS)] +
					   ((Size) (r & ((1 << (CDP_BLOCK_BITS - CDP_UNIT_BITS)) - 1)) << CDP_UNIT_BITS));
}

/* the profile a ref names (not 0) */
static inline ProfNode *
CdpProfAt(IdentityGraph *g, uint32 ref)
{
	uint32		i = ref - 1;

	return (ProfNode *) (g->profs.pages[i / CDP_PAGE_ELEMS] + (Size) (i % CDP_PAGE_ELEMS) * sizeof(ProfNode));
}

/* a node's profile as it was attached (merges may have moved it on) */
static inline ProfNode *
CdpNodeProf(IdentityGraph *g, const IdNode *node)
{
	return node->prof ? CdpProfAt(g, node->prof) : NULL;
}

/* the profile that holds everything of p now */
static inline ProfNode *
CdpCanonicalOf(IdentityGraph *g, ProfNode *p)
{
	while (p->into != 0)
		p = CdpProfAt(g, p->into);
	return p;
}

/* how many of p's members have the type of the slot */
static inline int32
CdpProfCount(IdentityGraph *g, const ProfNode *p, int slot)
{
	if (p->ntype_counts == 0)
		return slot < PROF_SMALL_COUNTS ? p->counts.small[slot] : 0;
	return slot < p->ntype_counts ? g->wide_counts[p->counts.wide][slot] : 0;
}

/* the online state of p (not in a rebuild) */
static inline ProfOnline *
CdpProfOnline(IdentityGraph *g, const ProfNode *p)
{
	uint32		i = p->self - 1;

	Assert(!g->replay);
	return (ProfOnline *) (g->prof_online.pages[i / CDP_PAGE_ELEMS] +
						   (Size) (i % CDP_PAGE_ELEMS) * sizeof(ProfOnline));
}

/* where p stands when merges pick the oldest: see CdpOlderProfile */
static inline int64
CdpProfRank(IdentityGraph *g, const ProfNode *p)
{
	return g->replay ? p->profile_id : CdpProfOnline(g, p)->rank;
}

/* walk a profile's members: for (IdNode *m = CdpFirstMember(g, p); m; m = CdpNextMember(g, m)) */
static inline IdNode *
CdpFirstMember(IdentityGraph *g, const ProfNode *p)
{
	return p->members ? CdpNodeAt(g, p->members) : NULL;
}

static inline IdNode *
CdpNextMember(IdentityGraph *g, const IdNode *m)
{
	return m->next_member ? CdpNodeAt(g, m->next_member) : NULL;
}

/*
 * Is a older than b, the one merges go into?  Online, rank is the id the
 * last rebuild's replay knew the profile by, so online resolution orders
 * profiles as the next replay will; in a replay it is the profile's id.
 */
static inline bool
CdpOlderProfile(IdentityGraph *g, const ProfNode *a, const ProfNode *b)
{
	int64		ra = CdpProfRank(g, a);
	int64		rb = CdpProfRank(g, b);

	return ra < rb || (ra == rb && a->profile_id < b->profile_id);
}

/* identity_graph.c */
extern void CdpGraphAttach(IdentityGraph *g, IdNode *node, ProfNode *p, TimestampTz at,
						   const char *message_id, bool is_new);
extern void CdpGraphAddSplit(IdentityGraph *g, CdpIdentifier *keep_out,
							 CdpIdentifier **members, int nmembers,
							 CdpIdentifier **anchors, int nanchors);
extern void CdpResolveMessage(IdentityGraph *g, IdMessage *m);
extern void CdpLoadSplits(IdentityGraph *g);

/* identity_extract.c */
struct CdpMessage;
extern List *CdpMessageIdentifiers(struct CdpMessage *msg, const char *previous_id_type,
								   List **invalid);

/* identity_online.c */
typedef struct CdpPendingIdentities CdpPendingIdentities;
extern CdpPendingIdentities *CdpResolveIdentities(struct CdpMessage **msgs, int n, HTAB *stats);
extern void CdpWriteResolvedIdentities(CdpPendingIdentities *pending);
extern bool CdpIsStaleResolution(ErrorData *edata);
extern HTAB *CdpNewProfileStats(MemoryContext cxt);
extern void CdpMergeProfileStats(HTAB *into, HTAB *from);
extern void CdpWriteProfileStats(HTAB *stats);
/* a profile's gathered stats: events counted, their earliest and latest times */
typedef struct CdpProfileStat
{
	int64		profile_id;
	int64		count;
	TimestampTz lo;
	TimestampTz hi;
	ItemPointerData row;		/* where its record was locked, if known (else zeroes) */
} CdpProfileStat;
extern int	CdpProfileStatsList(HTAB *stats, CdpProfileStat **out, bool *merged_since);
/* where a direct rewrite finds a profile record's stats (column indexes) */
typedef struct CdpStatsColumns
{
	int			count;
	int			first;
	int			last;
} CdpStatsColumns;
extern bool CdpProfileStatsColumns(Oid relid, CdpStatsColumns *cols);
extern void CdpAddProfileStat(const CdpStatsColumns *cols, Datum *values, bool *nulls,
							  const CdpProfileStat *st);
extern bool CdpProfileStatsArrays(HTAB *stats, Datum *args, bool *merged_since);
extern uint64 CdpGraphWrites(void);
extern const char *CdpProfileStatsRows(bool merged_since);
/* how stats rows a(n, lo, hi) (see CdpProfileStatsRows) are added to a profile record r */
#define CDP_PROFILE_STATS_SET(a) \
	"event_count = r.event_count + coalesce(" a ".n, 0), " \
	"first_seen = LEAST(r.first_seen, " a ".lo), last_seen = GREATEST(r.last_seen, " a ".hi)"
extern void CdpClearProfileStats(HTAB *stats);
extern int64 CdpLinkIdentifiers(CdpIdentifier *a, CdpIdentifier *b, const char *source,
								const char *message_id);
extern Oid	CdpIdentifierTypeOid(void);
extern int64 CdpNextProfileId(void);
extern void CdpLockIdentityGraph(void);

/* identity_recent.c: what an ingest worker read in earlier transactions */
extern void CdpIdentityGraphChanged(bool evidence);
extern bool CdpRecentPair(CdpIdentifier *a, CdpIdentifier *b, bool *linked);
extern void CdpRecentPairNote(CdpIdentifier *a, CdpIdentifier *b, bool linked);
extern void CdpRecentIdentitiesEnable(int max);
extern int	CdpRecentIdentitiesAttach(IdentityGraph *g, CdpIdentifier **ids, int n);
extern void CdpRecentIdentitiesNote(CdpIdentifier *id, int64 profile_id, TimestampTz linked_at,
									int32 version, int64 rank);
extern void CdpRecentIdentitiesCounts(uint64 *served, uint64 *read);

/* identity_known.c */
extern IdentityGraph *CdpKnownIdentities(void);
extern void CdpKnownIdentitiesStart(void);
extern void CdpKnownIdentitiesRemember(IdentityGraph *g);
extern void CdpKnownIdentitiesForget(void);
extern bool CdpKnownBlockedCurrent(void);
extern bool CdpKnownPair(CdpIdentifier *a, CdpIdentifier *b, bool *linked);
extern void CdpKnownPairRemember(CdpIdentifier *a, CdpIdentifier *b, int linked);

/* Trait keys one identifier holds at most; new keys past it are skipped. */
#define CDP_MAX_IDENTIFIER_TRAITS	256
/* Trait keys a profile shows at most (the first ones in key order). */
#define CDP_MAX_PROFILE_TRAITS		1000	/* as cdp.recompute_profile_state */

/* profile_state_queue.c */
typedef struct CdpStateQueue CdpStateQueue;
typedef struct CdpPendingId CdpPendingId;
extern CdpStateQueue *CdpNewStateQueue(MemoryContext cxt);
extern int	CdpStateQueueLength(CdpStateQueue *queue);
extern int	CdpStateQueueMark(CdpStateQueue *queue);
extern void CdpStateQueueRollback(CdpStateQueue *queue, int mark);
extern void CdpStateQueueCommit(CdpStateQueue *queue);
extern void CdpWriteQueuedProfileState(CdpStateQueue *queue, HTAB *stats);
extern CdpPendingId *CdpPendingOwner(CdpStateQueue *queue, CdpIdentifier *id,
									  int64 profile_id);
extern void CdpPendTrait(CdpStateQueue *queue, CdpPendingId *owner, const char *name,
						 int namelen, Datum value, TimestampTz at);
extern void CdpPendDecision(CdpStateQueue *queue, CdpPendingId *owner, const char *purpose,
							bool granted, TimestampTz at, const char *message_id,
							const char *source);

/* profile_state_records.c */
/* identifiers' state maps, each under the profile holding it */
typedef struct CdpIdentifierMaps
{
	int			n;
	int64	   *profile_ids;
	Datum	   *traits;			/* (Datum) 0 when it has none */
	Datum	   *times;
	Datum	   *consent;		/* (Datum) 0 when it has none */
} CdpIdentifierMaps;
extern bool CdpWriteIdentifierMaps(CdpIdentifierMaps *maps, HTAB *stats);

/* profile_state.c */
extern bool CdpMessageHasProfileState(struct CdpMessage *msg);
extern void CdpStoreProfileState(struct CdpMessage **msgs, int n, CdpStateQueue *queue);
extern void CdpRecomputeProfileState(int64 *profile_ids, int n);
extern void CdpProfileStateOfNewIdentities(CdpIdentifier **ids, int64 *profiles, int n);

#endif
