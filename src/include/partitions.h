/*
 * partitions.h
 *	  Partition routing and creation, used by ingest and maintenance.
 */
#ifndef CDP_PARTITIONS_H
#define CDP_PARTITIONS_H

extern void CdpPartitionCacheCallback(Datum arg, Oid relid);
extern int	CdpPremake(const CdpPartitionConfig *config, TimestampTz now);

#endif
