/*
 * spi_util.h
 *	  Prepared plans and checked execution over SPI.
 */
#ifndef CDP_SPI_UTIL_H
#define CDP_SPI_UTIL_H

#include "executor/spi.h"
#include "nodes/parsenodes.h"
#include "utils/relcache.h"

extern SPIPlanPtr CdpPlan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes);
extern SPIPlanPtr CdpPlanReplanned(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes);
extern SPIPlanPtr CdpPlanGeneric(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes);
extern void CdpCheckTypePlans(SPIPlanPtr *plans, int n, Oid *plans_type_oid, Oid typid);
extern int	CdpBeginIndexedPlans(void);
extern void CdpEndIndexedPlans(int level);
extern uint64 CdpExecPlan(SPIPlanPtr plan, Datum *args, const char *nulls, int expected);
extern uint64 CdpExecSql(const char *sql, int expected);
extern Datum CdpArray(Datum *elems, int n, Oid elemtype);
extern Datum CdpInt8Array(int64 *v, int n);
extern uint64 CdpExecArgs(const char *sql, int nargs, Oid *argtypes, Datum *args, int expected);

/* direct_insert.c */
extern bool CdpIsPlainTarget(Relation rel, AclMode mode);
typedef struct CdpDirectInsert CdpDirectInsert;
extern CdpDirectInsert *CdpBeginDirectInsert(Oid relid, const char *const *cols, const Oid *types,
											 int ncols, int max_rows, bool bulk);
extern void CdpDirectInsertRows(CdpDirectInsert *d, Datum *values, bool *nulls, int nrows);
extern void CdpEndDirectInsert(CdpDirectInsert *d);
extern bool CdpInsertRowsDirectly(Oid relid, const char *const *cols, const Oid *types, int ncols,
								  Datum *values, bool *nulls, int nrows);

/* direct_update.c */
typedef struct CdpDirectUpdate CdpDirectUpdate;
extern int	CdpDirectUpdateColumn(Oid relid, const char *name, Oid typid);
extern CdpDirectUpdate *CdpBeginDirectUpdate(Oid relid);
extern bool CdpDirectUpdateFind(CdpDirectUpdate *u, int64 key, Datum **values, bool **nulls);
extern bool CdpDirectUpdateFindAt(CdpDirectUpdate *u, int64 key, ItemPointer where,
								  Datum **values, bool **nulls);
extern void CdpDirectUpdateStore(CdpDirectUpdate *u);
extern void CdpEndDirectUpdate(CdpDirectUpdate *u);

#endif
