/* The moemu command's subcommands. Each returns the process exit status. */
#ifndef MOEMU_CLI_H
#define MOEMU_CLI_H

int cli_run_main(int argc, char **argv);  /* moemu run */
int cli_info_main(int argc, char **argv); /* moemu info */
int cli_hw_main(int argc, char **argv);   /* moemu hw */

#endif
