# MOEMU_CHECK_DEPS: every dependency is required; a missing one stops
# configure with one line naming the Debian package that provides it.
AC_DEFUN([MOEMU_CHECK_DEPS], [
  PKG_PROG_PKG_CONFIG
  PKG_CHECK_MODULES([OPENBLAS], [openblas], [],
    [AC_MSG_ERROR([OpenBLAS (cblas) not found: apt-get install libopenblas-dev])])
  save_CFLAGS=$CFLAGS; CFLAGS="$CFLAGS $OPENBLAS_CFLAGS"
  save_LIBS=$LIBS; LIBS="$LIBS $OPENBLAS_LIBS"
  AC_CHECK_HEADER([cblas.h], [],
    [AC_MSG_ERROR([cblas.h not found: apt-get install libopenblas-dev])])
  AC_CHECK_FUNC([cblas_sgemm], [],
    [AC_MSG_ERROR([cblas_sgemm not found in OpenBLAS: apt-get install libopenblas-dev])])
  CFLAGS=$save_CFLAGS; LIBS=$save_LIBS

  PKG_CHECK_MODULES([HWLOC], [hwloc >= 2.0], [],
    [AC_MSG_ERROR([hwloc >= 2.0 not found: apt-get install libhwloc-dev])])
  PKG_CHECK_MODULES([JANSSON], [jansson >= 2.10], [],
    [AC_MSG_ERROR([jansson not found: apt-get install libjansson-dev])])
  save_LIBS=$LIBS
  AC_CHECK_HEADER([csv.h], [],
    [AC_MSG_ERROR([libcsv not found: apt-get install libcsv-dev])])
  AC_SEARCH_LIBS([csv_init], [csv], [],
    [AC_MSG_ERROR([libcsv not found: apt-get install libcsv-dev])])
  CSV_LIBS=$LIBS; LIBS=$save_LIBS
  AC_SUBST([CSV_LIBS])
  PKG_CHECK_MODULES([CRITERION], [criterion], [],
    [AC_MSG_ERROR([Criterion (needed by make check) not found: apt-get install libcriterion-dev])])

  save_LIBS=$LIBS
  AC_SEARCH_LIBS([pthread_create], [pthread], [],
    [AC_MSG_ERROR([pthreads not found: apt-get install libc6-dev])])
  PTHREAD_LIBS=$LIBS; LIBS=$save_LIBS
  AC_SUBST([PTHREAD_LIBS])
  AC_SEARCH_LIBS([sqrt], [m])
])

# MOEMU_CHECK_VECTORIZE: let -O2 vectorize loops that need an epilogue and
# loops with selects (the kernels' exp, softmax and activation loops):
# -fno-trapping-math lets GCC turn a float select into a blend; it changes
# no result. Only where the compiler takes the flags.
AC_DEFUN([MOEMU_CHECK_VECTORIZE], [
  VECTORIZE_CFLAGS=
  flags="-fvect-cost-model=dynamic -fno-trapping-math"
  save_CFLAGS=$CFLAGS; CFLAGS="$CFLAGS -Werror $flags"
  AC_MSG_CHECKING([whether $CC accepts $flags])
  AC_COMPILE_IFELSE([AC_LANG_PROGRAM([], [])],
    [VECTORIZE_CFLAGS=$flags; AC_MSG_RESULT([yes])],
    [AC_MSG_RESULT([no])])
  CFLAGS=$save_CFLAGS
  AC_SUBST([VECTORIZE_CFLAGS])
])

# MOEMU_CHECK_MPI: --with-mpi builds the MPI transport (parallel/mpi.c)
# against Open MPI (pkg-config ompi-c), MPICH (pkg-config mpich) or
# whatever `mpicc -show` names; without it the build needs no MPI.
AC_DEFUN([MOEMU_CHECK_MPI], [
  AC_ARG_WITH([mpi],
    [AS_HELP_STRING([--with-mpi], [spread devices over processes with MPI (default: no)])],
    [], [with_mpi=no])
  have_mpi=no
  AS_IF([test "x$with_mpi" != xno], [
    PKG_CHECK_MODULES([MPI], [ompi-c], [have_mpi=yes], [
      PKG_CHECK_MODULES([MPI], [mpich], [have_mpi=yes], [
        AS_IF([mpicc -show >/dev/null 2>&1], [
          MPI_CFLAGS=`mpicc -show | tr ' ' '\n' | grep '^-I' | tr '\n' ' '`
          MPI_LIBS=`mpicc -show | tr ' ' '\n' | grep -E '^-(L|l|Wl)' | tr '\n' ' '`
          have_mpi=yes])])])
    AS_IF([test $have_mpi = no],
      [AC_MSG_ERROR([--with-mpi: no MPI found: apt-get install libopenmpi-dev openmpi-bin])])
    save_CFLAGS=$CFLAGS; CFLAGS="$CFLAGS $MPI_CFLAGS"
    save_LIBS=$LIBS; LIBS="$LIBS $MPI_LIBS"
    AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <mpi.h>]],
        [[MPI_Comm c; return MPI_Comm_create_group(MPI_COMM_WORLD, MPI_GROUP_EMPTY, 0, &c);]])],
      [], [AC_MSG_ERROR([--with-mpi: MPI ($MPI_LIBS) does not link or lacks MPI-3])])
    CFLAGS=$save_CFLAGS; LIBS=$save_LIBS
    AC_PATH_PROG([MPIRUN], [mpirun], [mpirun])
  ])
  AM_CONDITIONAL([HAVE_MPI], [test $have_mpi = yes])
  AC_SUBST([have_mpi])
  AC_SUBST([MPI_CFLAGS])
  AC_SUBST([MPI_LIBS])
])
