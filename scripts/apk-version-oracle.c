/* Test oracle: apk-tools' own version.c, driven from stdin.
   Lines "t A B" print apk_version_op_string(apk_version_compare(A,B)); "c V" prints 1/0 for apk_version_validate. */
#include <stdio.h>
#include <string.h>
#include "apk_version.h"
int main(void) {
	char line[8192];
	while (fgets(line, sizeof line, stdin)) {
		line[strcspn(line, "\n")] = 0;
		char *op = strtok(line, " "), *a = strtok(NULL, " "), *b = strtok(NULL, " ");
		if (!op || !a) { puts("!"); continue; }
		if (op[0] == 't' && b) puts(apk_version_op_string(apk_version_compare(a, b)));
		else if (op[0] == 'c') puts(apk_version_validate(APK_BLOB_STR(a)) ? "1" : "0");
		else puts("!");
	}
	return 0;
}
