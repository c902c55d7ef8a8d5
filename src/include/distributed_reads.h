/*
 * distributed_reads.h
 *	  Reads of cdp.events distributed by Citus (src/storage/distributed_reads.c).
 */
#ifndef DISTRIBUTED_READS_H
#define DISTRIBUTED_READS_H

extern void CdpDistributedReadsInit(void);
extern void CdpRefuseOnCitusWorker(const char *what);
extern bool CdpOnCitusWorker(void);

#endif							/* DISTRIBUTED_READS_H */
