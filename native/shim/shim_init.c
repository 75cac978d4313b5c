/* MPI_Init / MPI_Init_thread / MPI_Finalize: attach to and leave the segment. */
#include "shim.h"

int MPI_Init(int *argc, char ***argv) {
  int rc = PMPI_Init(argc, argv);
  if (rc == MPI_SUCCESS) shim_attach_after_init(MPI_THREAD_SINGLE);
  return rc;
}

int MPI_Init_thread(int *argc, char ***argv, int required, int *provided) {
  int rc = PMPI_Init_thread(argc, argv, required, provided);
  if (rc == MPI_SUCCESS) shim_attach_after_init(*provided);
  return rc;
}

int MPI_Finalize(void) {
  /* a call boundary like any other: a rank may be held here. Under
     MPI_THREAD_MULTIPLE (passthrough) there is no safe point, but the slot
     must still say "finalized", or the agent takes the rank's exit for a
     failure; no other thread is in MPI by now (MPI's rule for Finalize). */
  if (!shim_g.passthrough) SHIM_SAFE_POINT();
  shim_detach_at_finalize();
  return PMPI_Finalize();
}
