/*
 * identity_graph.c
 *	  The identity resolution algorithm over an in-memory graph of
 *	  identifiers and profiles.  Online resolution loads the part of the
 *	  graph a batch touches from the tables and writes back what changed;
 *	  rebuild_identities replays all stored evidence through the same code,
 *	  which is why the two agree.
 *
 *	  Per message (identity.md): drop blocked values; find the profiles that
 *	  hold the message's identifiers; if the union would break a rule (a
 *	  type's max_per_profile within its time window, a split pair, the hub
 *	  guard), drop the message's lowest-priority identifier, record the
 *	  violation and look again; then create a profile, or merge the profiles
 *	  into the oldest (lowest rank, then id: see CdpOlderProfile) and attach
 *	  the new identifiers.
 */
#include "postgres.h"

#include <limits.h>

#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "identity.h"

/*
 * Count delta more members of the slot's type in p.  Most profiles hold a
 * few identifiers of a few types: their counts fit in the node; the first
 * one that does not moves them all to an array of their own.
 */
static void
CountMember(IdentityGraph *g, ProfNode *p, int slot, int32 delta)
{
	int32	   *wide;
	int			n;

	if (p->ntype_counts == 0)
	{
		int32		c;

		if (slot < PROF_SMALL_COUNTS &&
			(c = p->counts.small[slot] + delta) >= 0 && c <= PG_UINT8_MAX)
		{
			p->counts.small[slot] = (uint8) c;
			return;
		}
		n = Max(Max(g->ntypes, slot + 1), PROF_SMALL_COUNTS);
		wide = MemoryContextAllocZero(g->cxt, sizeof(int32) * n);
		for (int s = 0; s < PROF_SMALL_COUNTS; s++)
			wide[s] = p->counts.small[s];
		if (g->nwide_counts == g->maxwide_counts)
		{
			g->maxwide_counts = Max(16, g->maxwide_counts * 2);
			g->wide_counts = g->wide_counts == NULL
				? MemoryContextAlloc(g->cxt, sizeof(int32 *) * g->maxwide_counts)
				: repalloc(g->wide_counts, sizeof(int32 *) * g->maxwide_counts);
		}
		p->counts.wide = g->nwide_counts++;
		g->wide_counts[p->counts.wide] = wide;
		p->ntype_counts = (uint16) n;
	}
	else if (slot >= p->ntype_counts)
	{
		n = Max(g->ntypes, slot + 1);
		wide = MemoryContextAllocZero(g->cxt, sizeof(int32) * n);
		memcpy(wide, g->wide_counts[p->counts.wide], sizeof(int32) * p->ntype_counts);
		pfree(g->wide_counts[p->counts.wide]);
		g->wide_counts[p->counts.wide] = wide;
		p->ntype_counts = (uint16) n;
	}
	g->wide_counts[p->counts.wide][slot] += delta;
}

/* make node a member of p (which must be canonical) */
void
CdpGraphAttach(IdentityGraph *g, IdNode *node, ProfNode *p, TimestampTz at,
			   const char *message_id, bool is_new)
{
	uint32		ref;

	node->attached = true;
	node->prof = p->self;
	CdpNodeSetLinkedAt(node, at);
	if (message_id != NULL)
	{
		Assert(!g->replay);
		/* a message's identifiers are attached one after the other */
		if (g->nmessage_ids == 0 || g->message_ids[g->nmessage_ids - 1] != message_id)
		{
			if (g->nmessage_ids == g->maxmessage_ids)
			{
				g->maxmessage_ids = Max(64, g->maxmessage_ids * 2);
				g->message_ids = g->message_ids == NULL
					? MemoryContextAlloc(g->cxt, sizeof(char *) * g->maxmessage_ids)
					: repalloc(g->message_ids, sizeof(char *) * g->maxmessage_ids);
			}
			g->message_ids[g->nmessage_ids++] = message_id;
		}
		node->src.message = g->nmessage_ids;
	}
	node->is_new = is_new;
	if (node->in_members)
		return;
	ref = CdpGraphNodeRef(g, node);
	node->in_members = true;
	node->next_member = 0;
	if (p->members_tail)
		CdpNodeAt(g, p->members_tail)->next_member = ref;
	else
		p->members = ref;
	p->members_tail = ref;
	p->nmembers++;
	CountMember(g, p, node->type_slot, 1);
}

static int
CompareIdentifierPtrs(const void *a, const void *b)
{
	return CdpIdentifierCompare(*(CdpIdentifier *const *) a, *(CdpIdentifier *const *) b);
}

/* a copy of id that lives as long as the graph */
static CdpIdentifier *
CopyIdentifier(IdentityGraph *g, const CdpIdentifier *id)
{
	CdpIdentifier *copy = MemoryContextAlloc(g->cxt, VARSIZE(id));

	memcpy(copy, id, VARSIZE(id));
	return copy;
}

static CdpIdentifier **
CopyIdentifiers(IdentityGraph *g, CdpIdentifier **ids, int n)
{
	CdpIdentifier **copy = MemoryContextAlloc(g->cxt, sizeof(CdpIdentifier *) * Max(n, 1));

	for (int i = 0; i < n; i++)
	{
		CdpGraphNode(g, ids[i], true);
		copy[i] = CopyIdentifier(g, ids[i]);
	}
	return copy;
}

void
CdpGraphAddSplit(IdentityGraph *g, CdpIdentifier *keep_out, CdpIdentifier **members,
				 int nmembers, CdpIdentifier **anchors, int nanchors)
{
	SplitRule  *rule = MemoryContextAlloc(g->cxt, sizeof(SplitRule));
	MemoryContext old;

	CdpGraphNode(g, keep_out, true);
	rule->keep_out = CopyIdentifier(g, keep_out);
	rule->members = CopyIdentifiers(g, members, nmembers);
	rule->nmembers = nmembers;
	qsort(rule->members, nmembers, sizeof(CdpIdentifier *), CompareIdentifierPtrs);
	rule->anchors = CopyIdentifiers(g, anchors, nanchors);
	rule->nanchors = nanchors;
	old = MemoryContextSwitchTo(g->cxt);
	g->splits = lappend(g->splits, rule);
	MemoryContextSwitchTo(old);
}

static void
EnsureMembers(IdentityGraph *g, ProfNode *p)
{
	if (!p->members_loaded)
	{
		if (g->load_members)
			g->load_members(g, p);
		p->members_loaded = true;
	}
}

/* the would-be union: the canonical profiles of the active identifiers */
static int
UnionProfiles(IdentityGraph *g, IdNode **nodes, bool *active, int n, ProfNode **out)
{
	int			np = 0;

	for (int i = 0; i < n; i++)
	{
		ProfNode   *p;
		bool		seen = false;

		if (!active[i] || !nodes[i]->attached)
			continue;
		p = CdpCanonicalOf(g, CdpNodeProf(g, nodes[i]));
		for (int j = 0; j < np; j++)
			seen |= (out[j] == p);
		if (!seen)
			out[np++] = p;
	}
	return np;
}

static bool
InUnion(IdentityGraph *g, CdpIdentifier *id, IdNode **nodes, bool *active, int n,
		ProfNode **profiles, int np)
{
	IdNode	   *node = CdpGraphNode(g, id, false);

	for (int i = 0; i < n; i++)
		if (active[i] && nodes[i] == node)
			return true;
	if (node == NULL || !node->attached)
		return false;
	for (int j = 0; j < np; j++)
		if (CdpCanonicalOf(g, CdpNodeProf(g, node)) == profiles[j])
			return true;
	return false;
}

/*
 * Does the union break a rule?  Fills *rule and *detail for the first one
 * broken: a limit (strongest type first), a split pair, or the hub guard.
 */
static bool
BreaksRule(IdentityGraph *g, IdNode **nodes, bool *active, int n, ProfNode **profiles,
		   int np, TimestampTz at, char **rule, char **detail)
{
	int			best_priority = INT_MAX;
	int		   *counts = palloc0(sizeof(int) * Max(g->ntypes, 1));
	ListCell   *lc;

	*rule = NULL;

	/* every type in the union counts, not only the message's own */
	for (int j = 0; j < np; j++)
		for (int s = 0; s < g->ntypes; s++)
			counts[s] += CdpProfCount(g, profiles[j], s);
	for (int k = 0; k < n; k++)
		if (active[k] && !nodes[k]->attached)
			counts[nodes[k]->type_slot]++;

	for (int s = 0; s < g->ntypes; s++)
	{
		const char *type = g->slot_names[s];
		const IdRule *r;
		int			count = counts[s];

		if (count == 0)
			continue;
		r = CdpSlotRule(g, s);
		if (r->max_per_profile == 0 || count <= r->max_per_profile ||
			(*rule != NULL && r->priority >= best_priority))
			continue;
		if (r->window_us != 0)
		{
			/* only identifiers linked within the window count */
			count = 0;
			for (int j = 0; j < np; j++)
				for (IdNode *m = CdpFirstMember(g, profiles[j]); m; m = CdpNextMember(g, m))
					if (m->type_slot == s && CdpNodeLinkedAt(m) >= at - r->window_us)
						count++;
			for (int k = 0; k < n; k++)
				if (active[k] && !nodes[k]->attached && nodes[k]->type_slot == s)
					count++;
			if (count <= r->max_per_profile)
				continue;
		}
		best_priority = r->priority;
		*rule = psprintf("%s.max_per_profile", type);
		*detail = psprintf("the profile would hold %d %s identifiers, the limit is %d",
						   count, type, r->max_per_profile);
	}
	if (*rule)
		return true;

	foreach(lc, g->splits)
	{
		SplitRule  *split = lfirst(lc);

		if (!InUnion(g, split->keep_out, nodes, active, n, profiles, np))
			continue;
		for (int a = 0; a < split->nanchors; a++)
		{
			if (InUnion(g, split->anchors[a], nodes, active, n, profiles, np))
			{
				*rule = pstrdup("split");
				*detail = psprintf("%s was split apart from %s",
								   CdpIdentifierToCString(split->keep_out),
								   CdpIdentifierToCString(split->anchors[a]));
				return true;
			}
		}
	}

	if (np >= 2)
	{
		ProfNode   *target = profiles[0];

		for (int j = 1; j < np; j++)
			if (CdpOlderProfile(g, profiles[j], target))
				target = profiles[j];
		if (target->merges_absorbed >= g->rules->max_merges)
		{
			*rule = pstrdup("hub");
			*detail = psprintf("profile " INT64_FORMAT " has absorbed %d merges (cdp.max_merges_per_profile)",
							   target->profile_id, target->merges_absorbed);
			return true;
		}
	}
	return false;
}

/* the active identifier with the weakest rule; the later one on a tie */
static int
WeakestActive(IdentityGraph *g, IdNode **nodes, bool *active, int n)
{
	int			weakest = -1;
	int			weakest_priority = -1;

	for (int i = 0; i < n; i++)
	{
		int			pr;

		if (!active[i])
			continue;
		pr = CdpSlotRule(g, nodes[i]->type_slot)->priority;
		if (pr >= weakest_priority)
		{
			weakest = i;
			weakest_priority = pr;
		}
	}
	return weakest;
}

static void
RecordViolation(IdentityGraph *g, CdpIdentifier *id, IdMessage *m, char *rule, char *detail)
{
	MemoryContext old;
	IdViolation *v;

	m->violated = true;
	if (g->quiet)
		return;
	old = MemoryContextSwitchTo(g->cxt);
	v = palloc(sizeof(IdViolation));

	v->identifier = CopyIdentifier(g, id);
	v->message_id = m->message_id;
	v->at = m->at;
	v->rule = rule;
	v->detail = detail;
	g->violations = lappend(g->violations, v);
	MemoryContextSwitchTo(old);
}

static void
Merge(IdentityGraph *g, ProfNode *from, ProfNode *into, IdMessage *m, CdpIdentifier *via_from,
	  CdpIdentifier *via_into)
{
	MemoryContext old = MemoryContextSwitchTo(g->cxt);
	IdMerge    *merge;

	EnsureMembers(g, from);
	for (IdNode *node = CdpFirstMember(g, from); node; node = CdpNextMember(g, node))
		node->prof = into->self;
	if (from->members)
	{
		if (into->members_tail)
			CdpNodeAt(g, into->members_tail)->next_member = from->members;
		else
			into->members = from->members;
		into->members_tail = from->members_tail;
		into->nmembers += from->nmembers;
	}
	for (int s = 0; s < g->ntypes; s++)
		if (CdpProfCount(g, from, s) != 0)
			CountMember(g, into, s, CdpProfCount(g, from, s));
	from->members = from->members_tail = 0;
	from->nmembers = 0;
	into->merges_absorbed += 1 + from->merges_absorbed;
	from->into = into->self;
	if (g->quiet)
	{
		MemoryContextSwitchTo(old);
		return;
	}

	merge = palloc(sizeof(IdMerge));
	merge->from_profile = from->profile_id;
	merge->into_profile = into->profile_id;
	merge->message_id = m->message_id;
	merge->at = m->at;
	merge->reason = psprintf("message carried %s (profile " INT64_FORMAT ") and %s (profile " INT64_FORMAT ")",
							 CdpIdentifierToCString(via_into), into->profile_id,
							 CdpIdentifierToCString(via_from), from->profile_id);
	g->merges = lappend(g->merges, merge);
	MemoryContextSwitchTo(old);
}

/*
 * Evidence split away stays away: a message carrying a split identifier
 * together with one of the members it was split from links nothing for the
 * split identifier.  Returns how many identifiers were dropped.
 */
static int
DropSplitEvidence(IdentityGraph *g, IdMessage *m, IdNode **nodes, bool *active, bool *dropped_out)
{
	int			dropped = 0;
	bool		carries_keep_out = (g->split_keep_outs == NULL);
	ListCell   *lc;

	for (int i = 0; i < m->nids && !carries_keep_out; i++)
		carries_keep_out = active[i] &&
			bsearch(&m->ids[i], g->split_keep_outs, g->nsplit_keep_outs,
					sizeof(CdpIdentifier *), CompareIdentifierPtrs) != NULL;
	if (!carries_keep_out)
		return 0;
	foreach(lc, g->splits)
	{
		SplitRule  *split = lfirst(lc);

		for (int i = 0; i < m->nids; i++)
		{
			if (!active[i] || CdpIdentifierCompare(m->ids[i], split->keep_out) != 0)
				continue;
			for (int k = 0; k < m->nids; k++)
			{
				CdpIdentifier *other = m->ids[k];

				if (k == i || !active[k] ||
					bsearch(&other, split->members, split->nmembers,
							sizeof(CdpIdentifier *), CompareIdentifierPtrs) == NULL)
					continue;
				active[i] = false;
				dropped_out[i] = true;
				dropped++;
				RecordViolation(g, m->ids[i], m, pstrdup("split"),
								psprintf("%s was split apart from %s",
										 CdpIdentifierToCString(m->ids[i]),
										 CdpIdentifierToCString(other)));
				break;
			}
		}
	}
	return dropped;
}

/*
 * A split identifier seen for the first time still gets a profile of its
 * own, as split_profile gave it one.
 */
static void
AttachAlone(IdentityGraph *g, IdMessage *m, IdNode **nodes, bool *split)
{
	for (int i = 0; i < m->nids; i++)
	{
		ProfNode   *p;

		if (!split[i] || nodes[i]->attached)
			continue;
		p = CdpGraphProfile(g, g->new_profile_id(g), true);
		p->is_new = true;
		p->members_loaded = true;
		CdpGraphAttach(g, nodes[i], p, m->at, m->message_id, true);
		if (g->replay)
			nodes[i]->src.seq = m->seq_offset;
		m->changed = true;
	}
}

/*
 * Resolve one message: the algorithm of identity.md.  Sets m->profile (0
 * when no usable identifier is left), m->linked and m->changed.
 */
void
CdpResolveMessage(IdentityGraph *g, IdMessage *m)
{
	IdNode	  **nodes = palloc(sizeof(IdNode *) * Max(m->nids, 1));
	ProfNode  **profiles = palloc(sizeof(ProfNode *) * Max(m->nids, 1));
	bool	   *active = palloc(sizeof(bool) * Max(m->nids, 1));
	bool	   *split = palloc0(sizeof(bool) * Max(m->nids, 1));
	int			nactive = 0;
	int			np;
	ProfNode   *target;

	m->profile = 0;
	m->changed = false;
	m->violated = false;
	m->created_profile = 0;
	m->linked = active;

	for (int i = 0; i < m->nids; i++)
	{
		nodes[i] = m->hashes ? CdpGraphNodeHashed(g, m->ids[i], m->hashes[i], true)
			: CdpGraphNode(g, m->ids[i], true);
		active[i] = true;
		for (int k = 0; k < i; k++)
			if (nodes[k] == nodes[i])
				active[i] = false;	/* the same identifier twice */
		if (active[i] && nodes[i]->blocked == 0)
			nodes[i]->blocked = CdpIsBlocked(g->rules, m->ids[i]) ? 2 : 1;
		if (active[i] && nodes[i]->blocked == 2)
		{
			active[i] = false;
			RecordViolation(g, m->ids[i], m, pstrdup("blocked"),
							pstrdup("a blocked placeholder value links nothing"));
		}
		nactive += active[i];
	}
	nactive -= DropSplitEvidence(g, m, nodes, active, split);
	if (nactive == 0)
	{
		AttachAlone(g, m, nodes, split);
		return;
	}

	for (;;)
	{
		char	   *rule;
		char	   *detail;
		bool		all_attached = true;
		int			drop;

		np = UnionProfiles(g, nodes, active, m->nids, profiles);
		for (int i = 0; i < m->nids; i++)
			all_attached &= (!active[i] || nodes[i]->attached);
		/* nothing new and one profile: the common case, nothing to check */
		if (all_attached && np == 1)
			break;
		for (int j = 0; j < np; j++)
			EnsureMembers(g, profiles[j]);
		if (nactive <= 1 || !BreaksRule(g, nodes, active, m->nids, profiles, np, m->at,
										&rule, &detail))
			break;
		drop = WeakestActive(g, nodes, active, m->nids);
		active[drop] = false;
		nactive--;
		RecordViolation(g, m->ids[drop], m, rule, detail);
	}

	if (np == 0)
	{
		int64		id = g->new_profile_id(g);

		target = CdpGraphProfile(g, id, true);
		target->is_new = true;
		target->members_loaded = true;
		m->created_profile = id;
		m->changed = true;
	}
	else
	{
		int			t = 0;

		for (int j = 1; j < np; j++)
			if (CdpOlderProfile(g, profiles[j], profiles[t]))
				t = j;
		target = profiles[t];
		for (int j = 0; j < np; j++)
		{
			CdpIdentifier *via_from = NULL;
			CdpIdentifier *via_into = NULL;

			if (j == t)
				continue;
			for (int i = 0; i < m->nids; i++)
			{
				if (!active[i] || !nodes[i]->attached)
					continue;
				if (CdpCanonicalOf(g, CdpNodeProf(g, nodes[i])) == profiles[j] && via_from == NULL)
					via_from = m->ids[i];
				if (CdpCanonicalOf(g, CdpNodeProf(g, nodes[i])) == target && via_into == NULL)
					via_into = m->ids[i];
			}
			Merge(g, profiles[j], target, m, via_from, via_into);
			m->changed = true;
		}
	}

	for (int i = 0; i < m->nids; i++)
	{
		if (active[i] && !nodes[i]->attached)
		{
			CdpGraphAttach(g, nodes[i], target, m->at, m->message_id, true);
			if (g->replay)
				nodes[i]->src.seq = m->seq_offset;
			m->changed = true;
		}
	}
	m->profile = target->profile_id;
	AttachAlone(g, m, nodes, split);
}
