/*
 * profile_state_queue.h
 *	  The insides of a queue of gathered traits and consent, shared by the
 *	  file that gathers into it (profile_state_queue.c), the one that
 *	  undoes what a failed part gathered (profile_state_journal.c) and the
 *	  one that writes it (profile_state_write.c).
 */
#ifndef PROFILE_STATE_QUEUE_H
#define PROFILE_STATE_QUEUE_H

#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "identity.h"

/* a hash key: an identifier's bytes, or a name of an identifier (owner) */
typedef struct BytesKey
{
	const void *owner;
	const char *bytes;
	int			len;
} BytesKey;

/* one consent decision (source NULL: none yet) */
typedef struct Decision
{
	bool		granted;
	TimestampTz at;
	const char *message_id;		/* NULL from a message without one */
	const char *source;
} Decision;

/* what every entry of a queue's tables starts with */
typedef struct PendingHead
{
	BytesKey	key;
	CdpIdentifier *id;
	const char *name;			/* key.bytes, NUL-terminated */
	int			namelen;
	void	   *next;			/* the identifier's next entry in the table */
} PendingHead;

/* an entry of a long list in one of the queue's tables */
typedef struct EntryRef
{
	BytesKey	key;
	PendingHead *entry;
} EntryRef;

/* the winning value of one trait key of one identifier */
typedef struct PendingTrait
{
	PendingHead h;
	Jsonb	   *value;
	TimestampTz at;
} PendingTrait;

/* the decisions about one purpose of one identifier */
typedef struct PendingConsent
{
	PendingHead h;
	Decision	latest;			/* the winner: latest, then a denial... */
	Decision   *changes;		/* by time, each unlike the one before */
	int			nchanges;
	int			capchanges;
} PendingConsent;

/* an identifier with gathered state: one copy of it, its entries */
struct CdpPendingId
{
	PendingHead h;
	PendingTrait *traits;		/* its keys, a list */
	PendingConsent *consent;	/* its purposes, a list */
	int			ntraits;
	int			nconsent;
	bool		stored;			/* it has a row in a state table (see MarkStored) */
	int64		profile_id;		/* the profile its last message resolved to */
	uint64		since;			/* CdpGraphWrites() then */
};

/* what a change to a queue replaced, to put it back (see CdpStateQueueMark) */
typedef enum UndoKind
{
	UNDO_OWNER_NEW,				/* an identifier's entry was made */
	UNDO_OWNER_SET,				/* its profile and since were set */
	UNDO_TRAIT_NEW,				/* a trait key's entry was made */
	UNDO_CONSENT_NEW,			/* a purpose's entry was made */
	UNDO_TRAIT_SET,				/* a trait's value was replaced */
	UNDO_LATEST_SET,			/* a purpose's winning decision was replaced */
	UNDO_CHANGE_SET,			/* a change of decision was replaced */
	UNDO_CHANGE_ADD				/* a change of decision was added */
} UndoKind;

typedef struct Undo
{
	UndoKind	kind;
	void	   *target;			/* the CdpPendingId, PendingTrait or PendingConsent */
	int			pos;			/* the change's place in its purpose's changes */
	union
	{
		struct
		{
			int64		profile_id;
			uint64		since;
		}			owner;
		struct
		{
			Jsonb	   *value;
			TimestampTz at;
		}			trait;
		Decision	decision;
	}			old;
} Undo;

/*
 * The traits and consent a call gathered and has not written, in a context
 * of its own (its size bounds a call's).
 */
struct CdpStateQueue
{
	MemoryContext cxt;
	HTAB	   *traits;			/* PendingTrait by identifier and key (long lists) */
	HTAB	   *consent;		/* PendingConsent by identifier and purpose (likewise) */
	HTAB	   *ids;			/* CdpPendingId by identifier */
	int64		nentries;		/* trait keys and purposes of all identifiers */
	int			nsources;		/* message sources, kept once each */
	const char *sources[16];
	bool		journal;		/* changes are recorded in undo (a part is open) */
	Undo	   *undo;			/* what each change replaced, oldest first */
	int			nundo;
	int			capundo;
};

extern void CdpStartStateQueue(CdpStateQueue *queue);
extern void CdpReserveUndo(CdpStateQueue *queue, int n);
extern Undo *CdpRecordUndo(CdpStateQueue *queue, UndoKind kind, void *target);
extern void CdpFreeDecisionTexts(CdpStateQueue *queue, Decision *d);

#endif							/* PROFILE_STATE_QUEUE_H */
