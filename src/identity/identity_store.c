/*
 * identity_store.c
 *	  Where the identity graph keeps its identifiers and profiles.  A rebuild
 *	  holds ten million of each, so the storage is built for that: nothing
 *	  ever moves (pointers stay valid, growing copies nothing), nodes and
 *	  profiles name each other by 32-bit refs, and entries are found through
 *	  open-addressing tables whose slots keep a ref and a byte of the
 *	  entry's hash, twelve to a cache line, so a probe rarely touches an
 *	  entry that is not the one it looks for.  An identifier node and its
 *	  value sit side by side in big blocks (the type is a slot number):
 *	  finding an identifier costs the slot and one more cache miss.
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "utils/memutils.h"

#include "identity.h"

#define PAGE_ELEMS		CDP_PAGE_ELEMS
/* node blocks: a node is named by (block, offset / 4) + 1 in 32 bits */
#define BLOCK_BITS		CDP_BLOCK_BITS
#define BLOCK_SIZE		((uint32) 1 << BLOCK_BITS)
#define UNIT_BITS		CDP_UNIT_BITS
#define NODE_REF(block, offset)	((((block) << (BLOCK_BITS - UNIT_BITS)) | ((offset) >> UNIT_BITS)) + 1)
#define FIRST_BLOCK_SIZE	((uint32) 64 * 1024)
#define MAX_BLOCKS		((uint32) 1 << (32 - BLOCK_BITS + UNIT_BITS - 1))
/* the bytes of a node for a value of len bytes */
#define NODE_SIZE(len)	TYPEALIGN(1 << UNIT_BITS, offsetof(IdNode, value) + (len))
/* type slots fit IdNode.type_slot */
#define MAX_TYPE_SLOTS	PG_UINT16_MAX

typedef struct TypeSlot
{
	char		type[CDP_ID_TYPE_MAX + 1];
	int			slot;
} TypeSlot;

/* ---------------------------------------------------------------- pages */

/* an array of n elements of size elem, in cxt (arr NULL) or grown */
static void *
GrowArray(MemoryContext cxt, void *arr, Size elem, uint32 n)
{
	return arr == NULL ? MemoryContextAlloc(cxt, elem * n) : repalloc(arr, elem * n);
}

static void *
PagedAt(const CdpPagedArray *a, uint32 i)
{
	return a->pages[i / PAGE_ELEMS] + (Size) (i % PAGE_ELEMS) * a->elem_size;
}

/* a zeroed new element at the end */
static void *
PagedAppend(CdpPagedArray *a, MemoryContext cxt, uint32 *index)
{
	uint32		page = a->count / PAGE_ELEMS;
	void	   *elem;

	if (page >= a->npages)
	{
		if (page >= a->maxpages)
		{
			a->maxpages = Max(16, a->maxpages * 2);
			a->pages = GrowArray(cxt, a->pages, sizeof(char *), a->maxpages);
		}
		a->pages[a->npages++] = MemoryContextAlloc(cxt, a->elem_size * PAGE_ELEMS);
	}
	*index = a->count++;
	elem = PagedAt(a, *index);
	memset(elem, 0, a->elem_size);
	return elem;
}

/* ---------------------------------------------------------------- slot tables */

/* a byte of the hash, never 0: a tag of 0 is an empty slot */
#define SLOT_TAG(h)		((uint8) Max((h) >> 24, 1))
#define SLOT_CACHE_LINE	64
#define SLOT_TAG_AT(t, pos)	((t)->buckets[(pos) / CDP_BUCKET_SLOTS].tags[(pos) % CDP_BUCKET_SLOTS])
#define SLOT_REF_AT(t, pos)	((t)->buckets[(pos) / CDP_BUCKET_SLOTS].refs[(pos) % CDP_BUCKET_SLOTS])

static void
SlotTableInit(CdpSlotTable *t, MemoryContext cxt, uint32 nbuckets)
{
	Size		size = sizeof(CdpSlotBucket) * (Size) nbuckets;

	StaticAssertStmt(sizeof(CdpSlotBucket) == SLOT_CACHE_LINE, "a bucket fills a cache line");
	t->allocated = MemoryContextAllocHuge(cxt, size + SLOT_CACHE_LINE);
	t->buckets = (CdpSlotBucket *) TYPEALIGN(SLOT_CACHE_LINE, t->allocated);
	memset(t->buckets, 0, size);
	t->bmask = nbuckets - 1;
	t->used = 0;
}

static inline uint32
SlotCount(const CdpSlotTable *t)
{
	return (t->bmask + 1) * CDP_BUCKET_SLOTS;
}

/* the first slot of hash's bucket, and the one after pos */
static inline uint32
SlotStart(const CdpSlotTable *t, uint32 hash)
{
	return (hash & t->bmask) * CDP_BUCKET_SLOTS;
}

static inline uint32
SlotNext(const CdpSlotTable *t, uint32 pos)
{
	return pos + 1 == SlotCount(t) ? 0 : pos + 1;
}

static void
SlotInsert(CdpSlotTable *t, uint32 hash, uint32 ref)
{
	uint32		pos = SlotStart(t, hash);

	while (SLOT_TAG_AT(t, pos) != 0)
		pos = SlotNext(t, pos);
	SLOT_REF_AT(t, pos) = ref;
	SLOT_TAG_AT(t, pos) = SLOT_TAG(hash);
	t->used++;
}

/*
 * A table holds up to seven eighths of its slots.  Probes stay short (a
 * key's bucket has twelve slots, and the next one is read only when all
 * are taken), and a rebuild's tables, sized from a count, do not double
 * where three quarters would: at 10 million identifiers that halves the
 * node index (64 MB instead of 128).
 */
#define SLOT_FILL(slots)	((double) (slots) * 7 / 8)

/*
 * Is t full?  Then it must double, so probes stay short: the caller fills
 * the new one again from the entries themselves.
 */
static bool
SlotTableNewIfFull(IdentityGraph *g, CdpSlotTable *t)
{
	uint32		nbuckets = t->bmask + 1;

	if (t->used + 1 <= SLOT_FILL(SlotCount(t)))
		return false;
	if (nbuckets >= ((uint32) 1 << 26))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the identity graph is too large")));
	/* the old table goes first: the new one is filled without it */
	pfree(t->allocated);
	SlotTableInit(t, g->cxt, nbuckets * 2);
	return true;
}

/* make an empty t hold n entries without doubling */
static void
SlotTableReserve(IdentityGraph *g, CdpSlotTable *t, double n)
{
	uint32		nbuckets = t->bmask + 1;

	if (t->used != 0)
		return;
	/* an estimate far past what a graph can hold reserves nothing */
	if (n > SLOT_FILL((double) ((uint32) 1 << 26) * CDP_BUCKET_SLOTS))
		return;
	while (SLOT_FILL(nbuckets * CDP_BUCKET_SLOTS) < n)
		nbuckets *= 2;
	if (nbuckets == t->bmask + 1)
		return;
	pfree(t->allocated);
	SlotTableInit(t, g->cxt, nbuckets);
}

typedef bool (*SlotMatch) (IdentityGraph *g, uint32 ref, const void *key);

/*
 * Find key (of the given hash) in t: true and its ref if there; else false
 * and the free slot where it would go.
 */
static inline bool
SlotFind(IdentityGraph *g, CdpSlotTable *t, uint32 hash, SlotMatch match, const void *key,
		 uint32 *pos, uint32 *ref)
{
	uint8		tag = SLOT_TAG(hash);

	for (*pos = SlotStart(t, hash); SLOT_TAG_AT(t, *pos) != 0; *pos = SlotNext(t, *pos))
	{
		if (SLOT_TAG_AT(t, *pos) == tag && match(g, SLOT_REF_AT(t, *pos), key))
		{
			*ref = SLOT_REF_AT(t, *pos);
			return true;
		}
	}
	return false;
}

static void
SlotSet(CdpSlotTable *t, uint32 pos, uint32 hash, uint32 ref)
{
	SLOT_REF_AT(t, pos) = ref;
	SLOT_TAG_AT(t, pos) = SLOT_TAG(hash);
	t->used++;
}

/* ---------------------------------------------------------------- the graph */

IdentityGraph *
CdpNewIdentityGraph(IdentityRules *rules, MemoryContext cxt, bool replay)
{
	IdentityGraph *g = MemoryContextAllocZero(cxt, sizeof(IdentityGraph));
	HASHCTL		ctl;

	g->cxt = cxt;
	g->rules = rules;
	g->replay = replay;
	g->profs.elem_size = sizeof(ProfNode);
	g->prof_online.elem_size = sizeof(ProfOnline);
	StaticAssertStmt(sizeof(ProfNode) <= 40, "ProfNode grew");
	StaticAssertStmt(offsetof(IdNode, value) <= 25, "IdNode grew");
	SlotTableInit(&g->node_index, cxt, 16);
	SlotTableInit(&g->prof_index, cxt, 16);

	ctl.keysize = CDP_ID_TYPE_MAX + 1;
	ctl.entrysize = sizeof(TypeSlot);
	ctl.hcxt = cxt;
	g->type_slots = hash_create("cdp identity types", 16, &ctl,
								HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	return g;
}

static uint32
TypeHash(const char *type, int len)
{
	return hash_bytes((const unsigned char *) type, len);
}

/*
 * Nodes keep an identifier's type as its slot and only the value: the hash
 * of an identifier combines its type's and its value's, so that a node's is
 * found again without the type's bytes.  A caller that looks ahead hashes
 * once, for CdpGraphPrefetchNode and CdpGraphNodeHashed.
 */
uint32
CdpGraphIdentifierHash(const CdpIdentifier *id)
{
	return hash_combine(TypeHash(IdTypePtr(id), id->type_len),
						hash_bytes((const unsigned char *) IdValuePtr(id), IdValueLen(id)));
}

/*
 * The slot of id's type, made if new.  A graph holds a few types: they are
 * looked at one by one before the hash table, which every new node would
 * otherwise pay for.
 */
#define TYPE_SLOTS_SCANNED	8

static int
TypeSlotOf(IdentityGraph *g, const CdpIdentifier *id)
{
	char		key[CDP_ID_TYPE_MAX + 1];
	TypeSlot   *t;
	bool		found;

	for (int s = 0; s < Min(g->ntypes, TYPE_SLOTS_SCANNED); s++)
		if (g->slot_lens[s] == id->type_len &&
			memcmp(g->slot_names[s], IdTypePtr(id), id->type_len) == 0)
			return s;
	memcpy(key, IdTypePtr(id), id->type_len);
	key[id->type_len] = '\0';
	t = hash_search(g->type_slots, key, HASH_ENTER, &found);
	if (!found)
	{
		if (g->ntypes >= MAX_TYPE_SLOTS)
		{
			hash_search(g->type_slots, key, HASH_REMOVE, NULL);
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("the identity graph holds more than %d identifier types", MAX_TYPE_SLOTS)));
		}
		t->slot = g->ntypes++;
		if (t->slot >= g->nslot_names)
		{
			g->nslot_names = Max(16, g->nslot_names * 2);
			g->slot_names = GrowArray(g->cxt, g->slot_names, sizeof(char *), g->nslot_names);
			g->slot_lens = GrowArray(g->cxt, g->slot_lens, sizeof(uint8), g->nslot_names);
			g->slot_hashes = GrowArray(g->cxt, g->slot_hashes, sizeof(uint32), g->nslot_names);
			g->slot_rules = GrowArray(g->cxt, g->slot_rules, sizeof(IdRule *), g->nslot_names);
		}
		g->slot_rules[t->slot] = NULL;
		g->slot_names[t->slot] = MemoryContextStrdup(g->cxt, key);
		g->slot_lens[t->slot] = id->type_len;
		g->slot_hashes[t->slot] = TypeHash(IdTypePtr(id), id->type_len);
	}
	return t->slot;
}

/* the rule of a slot's type, looked up once (a graph's rules never change) */
const IdRule *
CdpSlotRule(IdentityGraph *g, int slot)
{
	if (g->slot_rules[slot] == NULL)
		g->slot_rules[slot] = CdpRuleFor(g->rules, g->slot_names[slot], g->slot_lens[slot]);
	return g->slot_rules[slot];
}

/* keep the blocks' numbers in address order, for CdpGraphNodeRef */
static void
AddressOrderAdd(CdpNodeArena *a, uint32 b)
{
	uint32		i = b;

	while (i > 0 && a->blocks[a->by_address[i - 1]] > a->blocks[b])
	{
		a->by_address[i] = a->by_address[i - 1];
		i--;
	}
	a->by_address[i] = b;
}

/*
 * The ref of a node of g: found from its address (the last block first,
 * where a node just made is), as nodes do not keep their own.
 */
uint32
CdpGraphNodeRef(IdentityGraph *g, const IdNode *node)
{
	CdpNodeArena *a = &g->nodes;
	const char *addr = (const char *) node;
	uint32		b = a->nblocks - 1;

	if (addr < a->blocks[b] || addr >= a->blocks[b] + a->used[b])
	{
		uint32		lo = 0,
					hi = a->nblocks;

		/* the last block that starts at or before addr */
		while (hi - lo > 1)
		{
			uint32		mid = (lo + hi) / 2;

			if (a->blocks[a->by_address[mid]] <= addr)
				lo = mid;
			else
				hi = mid;
		}
		b = a->by_address[lo];
	}
	Assert(addr >= a->blocks[b] && addr < a->blocks[b] + a->used[b]);
	return NODE_REF(b, (uint32) (addr - a->blocks[b]));
}

/*
 * A new node with a copy of id right after it, carved from the current
 * block (a million small allocations would each pay a header and rounding).
 */
static IdNode *
NewNode(IdentityGraph *g, const CdpIdentifier *id, uint32 *ref)
{
	CdpNodeArena *a = &g->nodes;
	uint32		len = NODE_SIZE(IdValueLen(id));
	uint32		b = a->nblocks - 1;
	IdNode	   *node;

	if (IdValueLen(id) > PG_UINT16_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("identifier value of %d bytes is too long for the identity graph",
						(int) IdValueLen(id))));

	if (a->nblocks == 0 || a->used[b] + len > a->last_size)
	{
		if (a->nblocks >= MAX_BLOCKS)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("the identity graph is too large")));
		if (a->nblocks == a->maxblocks)
		{
			a->maxblocks = Max(16, a->maxblocks * 2);
			a->blocks = GrowArray(g->cxt, a->blocks, sizeof(char *), a->maxblocks);
			a->used = GrowArray(g->cxt, a->used, sizeof(uint32), a->maxblocks);
			a->by_address = GrowArray(g->cxt, a->by_address, sizeof(uint32), a->maxblocks);
		}
		b = a->nblocks++;
		/* a batch's graph is small: its first block is too */
		a->last_size = b == 0 ? FIRST_BLOCK_SIZE : BLOCK_SIZE;
		a->blocks[b] = MemoryContextAlloc(g->cxt, a->last_size);
		a->used[b] = 0;
		AddressOrderAdd(a, b);
	}
	node = (IdNode *) (a->blocks[b] + a->used[b]);
	memset(node, 0, offsetof(IdNode, value));
	node->value_len = (uint16) IdValueLen(id);
	memcpy(node->value, IdValuePtr(id), node->value_len);
	*ref = NODE_REF(b, a->used[b]);
	a->used[b] += len;
	a->count++;
	return node;
}

/* a copy of the identifier of a node, in the current memory context */
CdpIdentifier *
CdpNodeIdentifier(IdentityGraph *g, const IdNode *node)
{
	int			type_len = g->slot_lens[node->type_slot];
	Size		size = offsetof(CdpIdentifier, data) + type_len + node->value_len;
	CdpIdentifier *id = palloc(size);

	SET_VARSIZE(id, size);
	id->type_len = (uint8) type_len;
	memcpy(IdTypePtr(id), g->slot_names[node->type_slot], type_len);
	memcpy(IdValuePtr(id), node->value, node->value_len);
	return id;
}

static bool
NodeMatches(IdentityGraph *g, uint32 ref, const void *key)
{
	const IdNode *node = CdpNodeAt(g, ref);
	const CdpIdentifier *id = key;

	return node->value_len == IdValueLen(id) &&
		g->slot_lens[node->type_slot] == id->type_len &&
		memcmp(node->value, IdValuePtr(id), node->value_len) == 0 &&
		memcmp(g->slot_names[node->type_slot], IdTypePtr(id), id->type_len) == 0;
}

/*
 * Index every node again (the table doubled), walking them in the order
 * they were made: memory read in order, not a cache miss a node.
 */
static void
IndexNodesAgain(IdentityGraph *g)
{
	CdpNodeArena *a = &g->nodes;

	for (uint32 b = 0; b < a->nblocks; b++)
	{
		uint32		offset = 0;

		while (offset < a->used[b])
		{
			const IdNode *node = (const IdNode *) (a->blocks[b] + offset);

			SlotInsert(&g->node_index,
					   hash_combine(g->slot_hashes[node->type_slot],
									hash_bytes((const unsigned char *) node->value,
											   node->value_len)),
					   NODE_REF(b, offset));
			offset += NODE_SIZE(node->value_len);
		}
	}
}

/* the node for an identifier; with create, a detached one if unknown */
IdNode *
CdpGraphNode(IdentityGraph *g, CdpIdentifier *id, bool create)
{
	return CdpGraphNodeHashed(g, id, CdpGraphIdentifierHash(id), create);
}

/* CdpGraphNode for an identifier of this CdpGraphIdentifierHash */
IdNode *
CdpGraphNodeHashed(IdentityGraph *g, CdpIdentifier *id, uint32 hash, bool create)
{
	uint32		pos;
	uint32		ref;
	IdNode	   *node;

	if (create)
	{
		if (SlotTableNewIfFull(g, &g->node_index))
			IndexNodesAgain(g);
	}
	if (SlotFind(g, &g->node_index, hash, NodeMatches, id, &pos, &ref))
		return CdpNodeAt(g, ref);
	if (!create)
		return NULL;
	node = NewNode(g, id, &ref);
	node->type_slot = TypeSlotOf(g, id);
	SlotSet(&g->node_index, pos, hash, ref);
	return node;
}

static uint32
ProfileHash(int64 profile_id)
{
	return murmurhash32((uint32) profile_id ^ (uint32) ((uint64) profile_id >> 32));
}

/*
 * Lookahead.  A lookup in a big graph waits on two cache misses: the slots
 * of its hash, then the entry a slot names.  A caller that knows its next
 * keys asks for the slots of one (CdpGraphPrefetch*Slots) and, a few keys
 * later, for the entries those slots name (CdpGraphPrefetch*, which reads
 * the slots, by then loaded), so the misses of many keys overlap.  Only
 * hints: a table that has doubled since costs a wasted load, no more.
 */
static inline const CdpSlotBucket *
SlotBucket(const CdpSlotTable *t, uint32 hash)
{
	return &t->buckets[hash & t->bmask];
}

void
CdpGraphPrefetchNodeSlots(IdentityGraph *g, uint32 hash)
{
	CdpPrefetch(SlotBucket(&g->node_index, hash));
}

/* the nodes that may hold the identifier of this hash, value_len long */
void
CdpGraphPrefetchNode(IdentityGraph *g, uint32 hash, uint32 value_len)
{
	const CdpSlotBucket *b = SlotBucket(&g->node_index, hash);
	uint8		tag = SLOT_TAG(hash);

	for (int i = 0; i < CDP_BUCKET_SLOTS; i++)
	{
		if (b->tags[i] == tag)
		{
			const char *node = (const char *) CdpNodeAt(g, b->refs[i]);

			CdpPrefetch(node);
			CdpPrefetch(node + offsetof(IdNode, value) + value_len);
		}
	}
}

void
CdpGraphPrefetchProfileSlots(IdentityGraph *g, int64 profile_id)
{
	CdpPrefetch(SlotBucket(&g->prof_index, ProfileHash(profile_id)));
}

void
CdpGraphPrefetchProfile(IdentityGraph *g, int64 profile_id)
{
	uint32		hash = ProfileHash(profile_id);
	const CdpSlotBucket *b = SlotBucket(&g->prof_index, hash);
	uint8		tag = SLOT_TAG(hash);

	for (int i = 0; i < CDP_BUCKET_SLOTS; i++)
		if (b->tags[i] == tag)
			CdpPrefetch(CdpProfAt(g, b->refs[i]));
}

static bool
ProfileMatches(IdentityGraph *g, uint32 ref, const void *key)
{
	return CdpProfAt(g, ref)->profile_id == *(const int64 *) key;
}

/* index every profile again (the table doubled), in the order they were made */
static void
IndexProfilesAgain(IdentityGraph *g)
{
	for (uint32 i = 0; i < g->profs.count; i++)
		SlotInsert(&g->prof_index, ProfileHash(((ProfNode *) PagedAt(&g->profs, i))->profile_id), i + 1);
}

ProfNode *
CdpGraphProfile(IdentityGraph *g, int64 profile_id, bool create)
{
	uint32		hash = ProfileHash(profile_id);
	uint32		pos;
	uint32		ref;
	ProfNode   *p;

	if (create)
	{
		if (SlotTableNewIfFull(g, &g->prof_index))
			IndexProfilesAgain(g);
	}
	if (SlotFind(g, &g->prof_index, hash, ProfileMatches, &profile_id, &pos, &ref))
		return CdpProfAt(g, ref);
	if (!create)
		return NULL;
	p = PagedAppend(&g->profs, g->cxt, &ref);
	ref++;
	p->self = ref;
	p->profile_id = profile_id;
	if (!g->replay)
	{
		uint32		i;
		ProfOnline *po = PagedAppend(&g->prof_online, g->cxt, &i);

		Assert(i == ref - 1);
		po->rank = profile_id;
		po->version = -1;
		ItemPointerSetInvalid(&po->row);
	}
	SlotSet(&g->prof_index, pos, hash, ref);
	return p;
}

/*
 * Size an empty graph's indexes for about this many identifiers and
 * profiles (a rebuild knows them from the tables' statistics): every
 * doubling on the way would index everything again.
 */
void
CdpGraphReserve(IdentityGraph *g, double identifiers, double profiles)
{
	SlotTableReserve(g, &g->node_index, identifiers);
	SlotTableReserve(g, &g->prof_index, profiles);
}

/* follow merges to the profile that holds everything now */
ProfNode *
CdpCanonical(IdentityGraph *g, int64 profile_id)
{
	return CdpCanonicalOf(g, CdpGraphProfile(g, profile_id, true));
}

uint32
CdpGraphNodeCount(IdentityGraph *g)
{
	return g->nodes.count;
}

/*
 * The next node in the order nodes were made (which keeps every pass over
 * them deterministic); start with a zeroed iterator; NULL at the end.
 */
IdNode *
CdpGraphNextNode(IdentityGraph *g, CdpNodeIter *it)
{
	CdpNodeArena *a = &g->nodes;
	IdNode	   *node;

	while (it->block < a->nblocks && it->offset >= a->used[it->block])
	{
		it->block++;
		it->offset = 0;
	}
	if (it->block >= a->nblocks)
		return NULL;
	node = (IdNode *) (a->blocks[it->block] + it->offset);
	it->offset += NODE_SIZE(node->value_len);
	return node;
}

uint32
CdpGraphProfileCount(IdentityGraph *g)
{
	return g->profs.count;
}

ProfNode *
CdpGraphProfileAt(IdentityGraph *g, uint32 i)
{
	return PagedAt(&g->profs, i);
}
