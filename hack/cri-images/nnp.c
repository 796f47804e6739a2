/* The stand-in for critest's nonewprivs image: installed setuid root, it prints the effective
 * uid it runs with. Started by a non-root user, it prints 0 when the kernel honoured the setuid
 * bit and the user's own uid when no_new_privs kept it from doing so. */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	printf("Effective uid: %d\n", (int)geteuid());
	return 0;
}
