/*
 * profile_merge.h
 *	  The merges that decide what a profile shows (cdp.merge_traits and
 *	  cdp.merge_consent), callable from C for maps a write already holds.
 */
#ifndef CDP_PROFILE_MERGE_H
#define CDP_PROFILE_MERGE_H

#include "utils/jsonb.h"

extern void CdpMergeTraitMaps(Jsonb **traits, int ntraits, Jsonb **times, int ntimes,
							  int max_keys, bool keep_first, Datum *out);
extern Jsonb *CdpMergeConsentMaps(Jsonb **maps, int nmaps);

#endif
