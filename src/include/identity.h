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
	char	   *pattern;		/* lower-cased when not a regex */
	bool		is_regex;
	Datum		regex;			/* text datum for the regex matcher */
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

/* fields ordered for packing: a rebuild holds a million of these */
struct IdNode
{
	CdpIdentifier *id;			/* the key: the bytes right after the node */
	IdNode	   *next_member;
	ProfNode   *prof;			/* its profile (follow into); NULL detached */
	TimestampTz linked_at;
	int64		seq;			/* rebuild: the evidence row that attached it */
	union
	{
		const char *message_id; /* online: the message that attached it */
		int64		stored;		/* rebuild: its profile in cdp.identities */
	}			u;
	int32		type_slot;
	int8		blocked;		/* 0 not yet checked, 1 no, 2 blocked */
	bool		attached;		/* belongs to a profile */
	bool		is_new;			/* attached during this run */
	bool		in_members;
};

struct ProfNode
{
	int64		profile_id;		/* the key */
	int64		rank;			/* merges go into the lowest (rank, id) */
	ProfNode   *into;			/* merged into; NULL while canonical */
	int64		landing;		/* rebuild: the stored profile it maps to */
	int64		stored_into;	/* rebuild: profile_records.merged_into, 0 none */
	IdNode	   *members;
	IdNode	   *members_tail;
	int32	   *type_counts;	/* per type slot (inline_counts while few) */
	int32		merges_absorbed;
	int32		version;		/* profile_records.version as first read, -1 unknown */
	int32		nmembers;
	int32		ntype_counts;
	int32		inline_counts[4];
	bool		is_new;			/* made during this run */
	bool		members_loaded;
	bool		claimed;		/* rebuild: some replayed profile lands here */
	int32		stored_absorbed;	/* rebuild: profile_records.merges_absorbed */
	int64		stored_rank;	/* rebuild: profile_records.merge_rank, 0 none */
};

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
	uint32		last_size;		/* the size of the last block */
	uint32		count;			/* nodes */
} CdpNodeArena;

/* open addressing: slot = hash << 32 | (ref + 1), 0 = empty */
typedef struct CdpSlotTable
{
	uint64	   *slots;
	uint32		mask;
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
	CdpSlotTable prof_index;	/* profile id -> ProfNode */
	HTAB	   *type_slots;		/* type name -> slot */
	int			ntypes;
	char	  **slot_names;		/* slot -> type name */
	int			nslot_names;
	List	   *splits;			/* SplitRule * */
	LoadMembersFn load_members; /* online: fetch a profile's identifiers */
	NewProfileIdFn new_profile_id;
	void	   *private;
	bool		quiet;			/* rebuild: keep no merge or violation records */
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
	int64		created_hint;	/* rebuild: the id online resolution gave it */
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
extern List *CdpCachedSplits(void);
extern void CdpIdentityCacheCallback(Datum arg, Oid relid);
extern const IdRule *CdpRuleFor(IdentityRules *rules, const char *type, int type_len);
extern bool CdpIsBlocked(IdentityRules *rules, const CdpIdentifier *id);

/* identity_store.c */
extern IdentityGraph *CdpNewIdentityGraph(IdentityRules *rules, MemoryContext cxt);
extern IdNode *CdpGraphNode(IdentityGraph *g, CdpIdentifier *id, bool create);
extern ProfNode *CdpGraphProfile(IdentityGraph *g, int64 profile_id, bool create);
extern ProfNode *CdpCanonical(IdentityGraph *g, int64 profile_id);
extern uint32 CdpGraphNodeCount(IdentityGraph *g);
extern IdNode *CdpGraphNextNode(IdentityGraph *g, CdpNodeIter *it);
extern uint32 CdpGraphProfileCount(IdentityGraph *g);
extern ProfNode *CdpGraphProfileAt(IdentityGraph *g, uint32 i);

/* the profile that holds everything of p now */
static inline ProfNode *
CdpCanonicalOf(ProfNode *p)
{
	while (p->into != NULL)
		p = p->into;
	return p;
}

/*
 * Is a older than b, the one merges go into?  Online, rank is the id the
 * last rebuild's replay knew the profile by, so online resolution orders
 * profiles as the next replay will; in a replay it is the profile's id.
 */
static inline bool
CdpOlderProfile(const ProfNode *a, const ProfNode *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->profile_id < b->profile_id);
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
extern void CdpResolveIdentities(struct CdpMessage **msgs, int n, HTAB *stats);
extern HTAB *CdpNewProfileStats(MemoryContext cxt);
extern void CdpMergeProfileStats(HTAB *into, HTAB *from);
extern void CdpWriteProfileStats(HTAB *stats);
extern void CdpClearProfileStats(HTAB *stats);
extern int64 CdpLinkIdentifiers(CdpIdentifier *a, CdpIdentifier *b, const char *source,
								const char *message_id);
extern Oid	CdpIdentifierTypeOid(void);
extern int64 CdpNextProfileId(void);
extern void CdpLockIdentityGraph(void);

/* identity_known.c */
extern IdentityGraph *CdpKnownIdentities(void);
extern void CdpKnownIdentitiesStart(void);
extern void CdpKnownIdentitiesRemember(IdentityGraph *g);
extern void CdpKnownIdentitiesForget(void);
extern bool CdpKnownBlockedCurrent(void);

/* Trait keys one identifier holds at most; new keys past it are skipped. */
#define CDP_MAX_IDENTIFIER_TRAITS	256
/* Trait keys a profile shows at most (the first ones in key order). */
#define CDP_MAX_PROFILE_TRAITS		1000	/* as cdp.recompute_profile_state */

/* profile_state_queue.c */
typedef struct CdpStateQueue CdpStateQueue;
typedef struct CdpPendingId CdpPendingId;
extern CdpStateQueue *CdpNewStateQueue(MemoryContext cxt);
extern int	CdpStateQueueLength(CdpStateQueue *queue);
extern void CdpMergeStateQueue(CdpStateQueue *into, CdpStateQueue *from);
extern void CdpWriteQueuedProfileState(CdpStateQueue *queue);
extern CdpPendingId *CdpPendingOwner(CdpStateQueue *queue, CdpIdentifier *id);
extern void CdpPendTrait(CdpStateQueue *queue, CdpPendingId *owner, const char *name,
						 int namelen, Datum value, TimestampTz at);
extern void CdpPendDecision(CdpStateQueue *queue, CdpPendingId *owner, const char *purpose,
							bool granted, TimestampTz at, const char *message_id,
							const char *source);

/* profile_state.c */
extern bool CdpMessageHasProfileState(struct CdpMessage *msg);
extern void CdpStoreProfileState(struct CdpMessage **msgs, int n, CdpStateQueue *queue);
extern void CdpRecomputeProfileState(int64 *profile_ids, int n);
extern void CdpProfileStateOfNewIdentities(CdpIdentifier **ids, int64 *profiles, int n);

#endif
