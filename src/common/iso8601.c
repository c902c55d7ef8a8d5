/*
 * iso8601.c
 *	  Strict ISO 8601 timestamp parsing for message fields.  PostgreSQL's
 *	  timestamptz_in throws on bad input and accepts words like 'now'; a
 *	  message timestamp must instead be rejected quietly (it becomes a dead
 *	  letter) and must mean the same whatever the session's TimeZone is.
 */
#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/datetime.h"

#include "pg_cdp.h"

/* read exactly n digits at *p, advancing it */
static bool
ReadDigits(const char **p, const char *end, int n, int *value)
{
	int			v = 0;

	if (end - *p < n)
		return false;
	for (int i = 0; i < n; i++)
	{
		char		c = (*p)[i];

		if (c < '0' || c > '9')
			return false;
		v = v * 10 + (c - '0');
	}
	*p += n;
	*value = v;
	return true;
}

static int
DaysInMonth(int year, int month)
{
	static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

	if (month == 2 && ((year % 4 == 0 && year % 100 != 0) || year % 400 == 0))
		return 29;
	return days[month - 1];
}

/*
 * Parse YYYY-MM-DD[(T| )hh:mm[:ss[.fraction]]][Z|±hh[:mm[:ss]]] into a timestamptz.
 * No offset means UTC.  Returns false for anything else.
 */
bool
CdpParseIsoTimestamp(const char *s, int len, TimestampTz *result)
{
	const char *p = s;
	const char *end = s + len;
	int			year,
				month,
				day,
				hour = 0,
				minute = 0,
				second = 0;
	int64		fraction_us = 0;
	int64		offset_secs = 0;
	int64		days;
	TimestampTz ts;

	if (!ReadDigits(&p, end, 4, &year) || p >= end || *p++ != '-' ||
		!ReadDigits(&p, end, 2, &month) || p >= end || *p++ != '-' ||
		!ReadDigits(&p, end, 2, &day))
		return false;
	if (year < 1 || month < 1 || month > 12 || day < 1 || day > DaysInMonth(year, month))
		return false;

	if (p < end && (*p == 'T' || *p == 't' || *p == ' '))
	{
		p++;
		if (!ReadDigits(&p, end, 2, &hour) || p >= end || *p++ != ':' ||
			!ReadDigits(&p, end, 2, &minute))
			return false;
		if (p < end && *p == ':')
		{
			p++;
			if (!ReadDigits(&p, end, 2, &second))
				return false;
			if (p < end && (*p == '.' || *p == ','))
			{
				int			digits = 0;
				int64		scale = 100000;

				p++;
				while (p < end && *p >= '0' && *p <= '9')
				{
					if (digits < 6)
						fraction_us += (*p - '0') * scale;
					else if (digits == 6 && *p >= '5')
						fraction_us++;	/* round the seventh digit */
					scale /= 10;
					digits++;
					p++;
				}
				if (digits == 0)
					return false;
			}
		}
		/* 60 allows a leap second; it lands on the next minute */
		if (hour > 23 || minute > 59 || second > 60)
			return false;

		if (p < end && (*p == 'Z' || *p == 'z'))
			p++;
		else if (p < end && (*p == '+' || *p == '-'))
		{
			int			sign = (*p == '-') ? -1 : 1;
			int			oh,
						om = 0,
						os = 0;

			p++;
			if (!ReadDigits(&p, end, 2, &oh))
				return false;
			if (p < end && *p == ':')
				p++;
			if (p < end && !ReadDigits(&p, end, 2, &om))
				return false;
			/* seconds: PostgreSQL prints local mean time offsets that way */
			if (p < end && *p == ':')
			{
				p++;
				if (!ReadDigits(&p, end, 2, &os))
					return false;
			}
			if (oh > 15 || om > 59 || os > 59)
				return false;
			offset_secs = sign * (oh * 3600 + om * 60 + os);
		}
	}
	if (p != end)
		return false;

	days = date2j(year, month, day) - POSTGRES_EPOCH_JDATE;
	ts = days * USECS_PER_DAY +
		((int64) (hour * 60 + minute) * 60 + second - offset_secs) * USECS_PER_SEC +
		fraction_us;
	if (!IS_VALID_TIMESTAMP(ts))
		return false;
	*result = ts;
	return true;
}
